//! Reading request bodies within a limit. Past the limit the reader keeps
//! reading, and throwing away, up to `DRAIN` more bytes before the handler
//! answers 413: a client still sending gets that answer instead of a reset
//! connection (the "lingering close" of mature HTTP servers). Memory use
//! stays at the limit.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// How much beyond a limit is read and discarded before answering.
pub const DRAIN: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub enum BodyError<E> {
    /// The body is larger than the limit.
    TooLarge,
    /// The body could not be read.
    Broken(E),
}

/// Collects at most `limit` bytes of `stream`.
pub async fn read_limited<S, E>(mut stream: S, limit: usize) -> Result<Bytes, BodyError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) if total > limit => return Err(BodyError::TooLarge),
            Err(e) => return Err(BodyError::Broken(e)),
        };
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > limit + DRAIN {
            break;
        }
    }
    if total > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(buf.freeze())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, ()>> + Unpin {
        futures_util::stream::iter(
            sizes
                .iter()
                .map(|n| Ok(Bytes::from(vec![7u8; *n])))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn within_and_beyond_the_limit() {
        assert_eq!(read_limited(chunks(&[3, 4]), 7).await.unwrap().len(), 7);
        assert!(matches!(
            read_limited(chunks(&[3, 5]), 7).await,
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            read_limited(chunks(&[8, DRAIN, DRAIN]), 7).await,
            Err(BodyError::TooLarge)
        ));
        let broken = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"ab")), Err("cut")]);
        assert!(matches!(
            read_limited(broken, 7).await,
            Err(BodyError::Broken("cut"))
        ));
    }
}

/// A request body that must arrive whole by a deadline (a backstop under
/// every body read, whatever reads it), and that keeps its connection
/// marked as reading for an unverified caller until it is done.
pub struct Deadline {
    inner: axum::body::Body,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    mark: Option<crate::http::conn::UnverifiedBody>,
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl Deadline {
    pub fn new(
        inner: axum::body::Body,
        within: Option<std::time::Duration>,
        mark: Option<crate::http::conn::UnverifiedBody>,
    ) -> Self {
        Deadline {
            inner,
            sleep: within.map(|d| Box::pin(tokio::time::sleep(d))),
            mark,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                self.mark = None;
                return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
            }
        }
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.mark = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
