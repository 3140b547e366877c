//! The client's errors: what failed, on which URL or file, and whether
//! trying again later may help (`is_transient`); for a request that never
//! got an answer, what the operator can do about it (`TransportHint`, read
//! from the error's type, never its text).
//!
//! Must not: decide a retry or log — callers do, on the variants.

use reqwest::StatusCode;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("could not build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("could not read the CA file {path}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the client certificate or key {path}")]
    ClientCertFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the client certificate {cert} and its key are not a usable PEM identity")]
    ClientCert {
        cert: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the CA file {path} holds no usable PEM certificate")]
    CaPem {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered with a body that could not be read: {reason}")]
    Decode { url: String, reason: String },
    #[error("{url} answered with more than {limit} bytes; refused")]
    TooLarge { url: String, limit: u64 },
    #[error("the license at {url} is not valid")]
    LicenseInvalid { url: String },
    #[error("download {url} stalled: no data for {secs} s")]
    Stalled { url: String, secs: u64 },
    #[error("download {url} has {algo} {actual}, expected {expected}")]
    Checksum {
        url: String,
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("download {url} is {actual} bytes, expected {expected}")]
    Size {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("could not write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether trying again later may succeed (network trouble, a server
    /// error, a stalled transfer, a local disk problem) — as opposed to an
    /// answer that will not change (bad checksum, refused credentials).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } | ClientError::Io { .. } | ClientError::Stalled { .. } => true,
            ClientError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// What the operator can do about a request that never got an answer,
    /// read from the error's type (never its text): `None` when there is
    /// no hint to give.
    pub fn transport_hint(&self) -> Option<TransportHint> {
        let ClientError::Http { source, .. } = self else {
            return None;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(source);
        while let Some(e) = next {
            if let Some(tls) = find_rustls(e) {
                return Some(match tls {
                    rustls::Error::InvalidCertificate(_) => TransportHint::UntrustedCertificate,
                    rustls::Error::InvalidMessage(_) => TransportHint::NotTls,
                    _ => TransportHint::TlsHandshake,
                });
            }
            next = e.source();
        }
        if source.is_connect() {
            Some(TransportHint::NothingListens)
        } else {
            None
        }
    }
}

/// Why a request never got an answer, as far as the operator can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportHint {
    /// The server's certificate does not chain to a trusted CA.
    UntrustedCertificate,
    /// The server does not speak TLS at that address.
    NotTls,
    /// The TLS handshake failed for another reason.
    TlsHandshake,
    /// Nothing accepted the connection.
    NothingListens,
}

impl std::fmt::Display for TransportHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportHint::UntrustedCertificate => {
                "the server's certificate is not trusted: pass --ca-file (server.ca_file in watchdog.yml) with the CA that issued it"
            }
            TransportHint::NotTls => {
                "the server does not speak TLS there: use http:// (or give the server --tls-cert/--tls-key)"
            }
            TransportHint::TlsHandshake => "the TLS handshake failed",
            TransportHint::NothingListens => {
                "nothing answers there: is palette-server running, and is the address right?"
            }
        })
    }
}

/// The rustls error inside an error, looking through `std::io::Error`
/// wrappers (hyper and reqwest carry it so).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}
