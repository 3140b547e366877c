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
