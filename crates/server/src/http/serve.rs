//! Serving: binding, TLS (and mutual TLS), the HTTP/1 and HTTP/2 timers,
//! the connection cap, the fleet's background tasks, and a graceful stop
//! that flushes the inventory. Must not: hold fleet logic.

use anyhow::Context;

use super::conn;
use crate::platform;
use crate::ServerOptions;

/// Header timeout (which also ends idle kept-alive HTTP/1 connections) and
/// HTTP/2 keep-alive pings that find dead peers.
fn configure_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &conn::Limits,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
}

/// A TLS configuration that requires a client certificate issued by the
/// CA in `client_ca` (mutual TLS).
fn mtls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("while reading the TLS certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("while reading the TLS key {}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(client_ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("while reading the client CA {}", client_ca.display()))?;
    if cas.is_empty() {
        anyhow::bail!(
            "the client CA file {} holds no certificate",
            client_ca.display()
        );
    }
    for c in cas {
        roots.add(c).with_context(|| {
            format!(
                "a certificate in {} is not a usable CA",
                client_ca.display()
            )
        })?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .context("while building the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("while choosing TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds `opts.listen` and serves until `shutdown` resolves.
pub async fn serve(
    opts: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("while binding {}", opts.listen))?;
    serve_on(listener, opts, shutdown).await
}

/// Serves on an already bound listener until `shutdown` resolves, then
/// flushes the inventory.
pub async fn serve_on(
    listener: std::net::TcpListener,
    opts: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let fd_limit = platform::raise_nofile_limit();
    let fd_cap = fd_limit.map(|l| conn::cap_for_fd_limit(l.min(1 << 21)));
    let max_connections = match (opts.limits.max_connections, fd_cap) {
        (Some(asked), Some(cap)) if asked > cap => {
            tracing::warn!(
                asked,
                cap,
                fd_limit,
                "--max-connections is more than the file limit allows; using {cap}"
            );
            cap
        }
        (Some(asked), _) => asked,
        (None, Some(cap)) => cap,
        (None, None) => 10_000,
    };
    let state = crate::open_state(&opts).await?;
    state.collect_orphan_artifacts().await;
    tracing::info!(
        store_id = state.store_id(),
        max_connections,
        fd_limit,
        header_timeout_s = opts.limits.header_timeout.as_secs(),
        "store opened"
    );
    let tracker = conn::Tracker::new(max_connections);
    let sweeper_stop = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(
        tracker
            .clone()
            .sweeper(opts.limits.header_timeout, sweeper_stop.clone()),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(state.fleet.clone().rollout_driver(stop_rx.clone()));
    let sync = tokio::spawn(state.fleet.clone().replica_sync(stop_rx.clone()));
    let flusher = tokio::spawn(state.fleet.clone().heartbeat_flusher(stop_rx));
    let app = super::app(state);
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h2.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let svc = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = match &opts.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = match &opts.client_ca {
                None => axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "while loading TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
                Some(ca) => {
                    tracing::info!(client_ca = %ca.display(), "mutual TLS: clients must present a certificate issued by this CA");
                    axum_server::tls_rustls::RustlsConfig::from_config(std::sync::Arc::new(
                        mtls_config(cert, key, ca)?,
                    ))
                }
            };
            tracing::info!(listen = %opts.listen, data_dir = %opts.data_dir.display(), "palette-server listening (HTTPS)");
            let mut server = axum_server::from_tcp_rustls(listener, config)
                .map(|tls| conn::LimitAcceptor::new(tls, tracker))
                .handle(handle);
            configure_http(server.http_builder(), &opts.limits);
            server.serve(svc).await
        }
        None => {
            tracing::info!(listen = %opts.listen, data_dir = %opts.data_dir.display(), "palette-server listening (HTTP)");
            let mut server = axum_server::from_tcp(listener)
                .acceptor(conn::LimitAcceptor::new(
                    axum_server::accept::DefaultAcceptor::new(),
                    tracker,
                ))
                .handle(handle);
            configure_http(server.http_builder(), &opts.limits);
            server.serve(svc).await
        }
    };
    let _ = stop_tx.send(true);
    sweeper_stop.cancel();
    let _ = sweeper.await;
    let _ = driver.await;
    let _ = sync.await;
    let _ = flusher.await;
    result.with_context(|| format!("while serving on {}", opts.listen))
}
