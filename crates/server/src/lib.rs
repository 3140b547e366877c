//! palette-server: the fleet's control point.
//!
//! Owns: the HTTP API (legacy v1 in `v1`, ours in `v2`), credentials
//! (`auth`), durable storage behind the `Store` trait (`store`, SQLite in
//! `sqlite`), content-addressed artifacts (`artifacts`) and the in-memory
//! views that keep hot paths off the database (`state`).
//!
//! Must not: trust a host name, token or upload before validating it, write
//! anything half-way, or block a request on another host's work.

pub mod artifacts;
pub mod auth;
pub mod backup;
pub mod body;
pub mod client_addr;
pub mod conn;
pub mod metrics;
mod ops;
mod platform;
pub mod ratelimit;
pub mod rollout;
pub mod rollouts;
pub mod state;
pub mod store;
mod tokens;
pub mod ui;
pub mod v1;
pub mod v2;
pub mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

pub use state::{AppState, Settings};

/// An error and its sources on one line, `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Builds the whole HTTP application.
pub fn app(state: AppState) -> Router {
    // Multipart uploads: the file part is capped by `max_config_bytes` as it
    // is read; the whole body may run `DRAIN` over so a 413 reaches the client.
    let config_limit = state.settings.max_config_bytes + 64 * 1024 + body::DRAIN;
    let no_cache = [
        (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        (header::PRAGMA, "no-cache"),
        (header::EXPIRES, "0"),
    ];
    let mut router = Router::new()
        .merge(v1::router().layer(axum::middleware::from_fn_with_state(
            state.clone(),
            v1::auth_limit_layer,
        )))
        .merge(v2::router().layer(DefaultBodyLimit::disable()))
        .merge(ops::router())
        .merge(ui::router())
        .fallback(|| async { v1::text(StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(DefaultBodyLimit::max(config_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            v1::heartbeat_layer,
        ));
    for (name, value) in no_cache {
        router = router.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    // Every answer: no content sniffing; under TLS, browsers keep to
    // HTTPS for this server (HSTS).
    router = router.layer(SetResponseHeaderLayer::if_not_present(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ));
    if state.settings.tls {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_addr::layer,
        ))
        .with_state(state)
}

/// Under every request body: a deadline (the body timeout and a second of
/// slack, behind the handlers' own 408; artifact uploads have their stall
/// timeout instead), and, for a caller whose credential does not verify,
/// the mark that lets the connection layer evict it first at the cap.
async fn body_guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let verified =
        auth::presented_token(req.headers()).is_some_and(|t| state.credential(t).is_some());
    let mark = if verified {
        None
    } else {
        req.extensions()
            .get::<conn::ConnSlot>()
            .map(conn::ConnSlot::unverified_body)
    };
    let upload = req.method() == axum::http::Method::POST && req.uri().path() == "/api/v2/releases";
    let within =
        (!upload).then(|| state.settings.limits.body_timeout + std::time::Duration::from_secs(1));
    let req = req.map(|b| axum::body::Body::new(body::Deadline::new(b, within, mark)));
    next.run(req).await
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
    pub agent_tokens: Vec<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: only clients presenting a certificate issued by this CA
    /// (PEM) are served (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Largest accepted release artifact.
    pub max_artifact_bytes: u64,
    /// Connection and body limits.
    pub limits: conn::Limits,
    /// New host names one agent credential may introduce at once, and per
    /// minute after that.
    pub new_hosts_burst: u32,
    /// See `Settings::require_host_tokens`.
    pub require_host_tokens: bool,
    pub new_hosts_per_minute: u32,
    /// Failed authentications allowed per source address.
    pub auth_limit: ratelimit::AuthLimit,
    /// What a release published without a rollout does.
    pub default_rollout: rollouts::DefaultRollout,
    /// Tests: the file holding the instant maintenance windows are judged at.
    pub clock_file: Option<PathBuf>,
    /// `postgres://…`; `None`: SQLite in the data folder.
    pub database: Option<String>,
    /// Load balancers or proxies whose forwarded client address is
    /// believed (see `client_addr`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// See `Settings::rollout_host_timeout`.
    pub rollout_host_timeout: std::time::Duration,
    /// `s3://bucket/prefix`; `None`: artifacts in the data folder.
    pub artifacts: Option<String>,
}

impl ServerOptions {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ServerOptions {
            data_dir,
            listen,
            admin_token: None,
            agent_tokens: Vec::new(),
            tls: None,
            client_ca: None,
            max_artifact_bytes: Settings::new(PathBuf::new()).max_artifact_bytes,
            limits: conn::Limits::default(),
            new_hosts_burst: Settings::new(PathBuf::new()).new_hosts_burst,
            require_host_tokens: false,
            new_hosts_per_minute: Settings::new(PathBuf::new()).new_hosts_per_minute,
            auth_limit: ratelimit::AuthLimit::default(),
            trusted_proxies: Vec::new(),
            rollout_host_timeout: std::time::Duration::from_secs(30 * 60),
            default_rollout: Default::default(),
            clock_file: None,
            database: None,
            artifacts: None,
        }
    }
}

/// Opens the store `database` names (`postgres://…`), or SQLite in
/// `data_dir`.
pub async fn open_store(
    data_dir: &std::path::Path,
    database: Option<&str>,
) -> anyhow::Result<Arc<dyn store::Store>> {
    match database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            // The password stays out of the log and the error.
            let shown = url
                .split_once('@')
                .map(|(_, host)| host)
                .unwrap_or("(the database)");
            let s = store::SqlStore::open_postgres(url)
                .await
                .with_context(|| format!("while opening the PostgreSQL database at {shown}"))?;
            tracing::info!(database = shown, "store: PostgreSQL");
            Ok(Arc::new(s))
        }
        Some(_) => anyhow::bail!(
            "--database must be a postgres:// URL (leave it out for SQLite in the data folder)"
        ),
        None => {
            let db = data_dir.join("palette.db");
            let s = store::SqlStore::open_sqlite(&db)
                .await
                .with_context(|| format!("while opening the database {}", db.display()))?;
            Ok(Arc::new(s))
        }
    }
}

/// Opens the store and builds the state.
pub async fn open_state(opts: &ServerOptions) -> anyhow::Result<AppState> {
    fs_err::create_dir_all(&opts.data_dir)?;
    let store = open_store(&opts.data_dir, opts.database.as_deref()).await?;
    let mut settings = Settings::new(opts.data_dir.clone());
    settings.max_artifact_bytes = opts.max_artifact_bytes;
    settings.limits = opts.limits.clone();
    settings.new_hosts_burst = opts.new_hosts_burst;
    settings.require_host_tokens = opts.require_host_tokens;
    settings.new_hosts_per_minute = opts.new_hosts_per_minute;
    settings.auth_limit = opts.auth_limit;
    settings.default_rollout = opts.default_rollout;
    settings.clock_file = opts.clock_file.clone();
    settings.tls = opts.tls.is_some();
    settings.trusted_proxies = opts.trusted_proxies.clone();
    settings.rollout_host_timeout = opts.rollout_host_timeout;
    settings.artifacts = opts.artifacts.clone();
    AppState::load(
        store,
        settings,
        opts.admin_token.as_deref(),
        &opts.agent_tokens,
    )
    .await
    .context("while loading the server state")
}

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
    let state = open_state(&opts).await?;
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
    let driver = tokio::spawn(state.clone().rollout_driver(stop_rx.clone()));
    let sync = tokio::spawn(state.clone().replica_sync(stop_rx.clone()));
    let flusher = tokio::spawn(state.clone().heartbeat_flusher(stop_rx));
    let app = app(state);
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
