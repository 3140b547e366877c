//! Every environment variable a palette-updater program reads, in one
//! place. Programs refer to these constants, never to string literals.

/// Log filter for every program (`info` by default), e.g. `debug` or
/// `palette_watchdog=debug,info` (tracing-subscriber's `EnvFilter` syntax).
pub const LOG: &str = "PALETTE_LOG";
/// Every program: `text` (default) or `json` (one JSON object a line; for
/// the server its output, for the watchdog and manager their log files).
pub const LOG_FORMAT: &str = "PALETTE_LOG_FORMAT";

/// palette-server: the bootstrap operator token (kept only as a hash).
pub const ADMIN_TOKEN: &str = "PALETTE_ADMIN_TOKEN";
/// palette-server: comma-separated agent tokens (license keys) to accept.
pub const AGENT_TOKENS: &str = "PALETTE_AGENT_TOKENS";
/// palette-server: folder for the database and artifacts (`--data-dir`).
pub const DATA_DIR: &str = "PALETTE_DATA_DIR";
/// palette-server: the database (`postgres://…`; unset: SQLite in the data
/// folder).
pub const DATABASE: &str = "PALETTE_DATABASE";
/// palette-server: where release artifacts live, `s3://bucket/prefix` (default:
/// the data folder).
pub const ARTIFACTS: &str = "PALETTE_ARTIFACTS";
/// palette-server: address to listen on (`--listen`).
pub const LISTEN: &str = "PALETTE_LISTEN";
/// palette-server: PEM certificate chain (`--tls-cert`).
pub const TLS_CERT: &str = "PALETTE_TLS_CERT";
/// palette-server: PEM private key (`--tls-key`).
pub const TLS_KEY: &str = "PALETTE_TLS_KEY";
/// palette-server: largest accepted release artifact in bytes.
pub const MAX_ARTIFACT_BYTES: &str = "PALETTE_MAX_ARTIFACT_BYTES";
/// palette-server: connections served at once (default: half the file
/// limit, which is raised to its hard maximum at start).
pub const MAX_CONNECTIONS: &str = "PALETTE_MAX_CONNECTIONS";
/// palette-server: the addresses (CIDR, comma-separated) of the load
/// balancers or proxies in front of it, whose `X-Forwarded-For` /
/// `Forwarded` name the client.
pub const TRUSTED_PROXIES: &str = "PALETTE_TRUSTED_PROXIES";
/// palette-server: minutes a host admitted to a rollout may show no sign of
/// taking the release before it counts as failed (default 30).
pub const ROLLOUT_HOST_TIMEOUT_MINS: &str = "PALETTE_ROLLOUT_HOST_TIMEOUT_MINS";
/// palette-server: seconds a client has to send a request's headers; also
/// the longest idle time of a kept-alive connection (default 20).
pub const HEADER_TIMEOUT_SECS: &str = "PALETTE_HEADER_TIMEOUT_SECS";
/// palette-server: seconds a client has to send a whole non-artifact
/// request body (default 60).
pub const BODY_TIMEOUT_SECS: &str = "PALETTE_BODY_TIMEOUT_SECS";
/// palette-server: longest pause, in seconds, in an artifact upload
/// (default 60).
pub const UPLOAD_STALL_SECS: &str = "PALETTE_UPLOAD_STALL_SECS";
/// palette-server: new host names one agent credential may introduce at
/// once (default 10000)...
pub const NEW_HOSTS_BURST: &str = "PALETTE_NEW_HOSTS_BURST";
/// Server: accept the enrollment key on v2 only to enroll.
pub const REQUIRE_HOST_TOKENS: &str = "PALETTE_REQUIRE_HOST_TOKENS";
/// ...and per minute after that (default 1200).
pub const NEW_HOSTS_PER_MINUTE: &str = "PALETTE_NEW_HOSTS_PER_MINUTE";
/// palette-server: what a release published without a rollout does
/// (`immediate` or `manual`).
pub const DEFAULT_ROLLOUT: &str = "PALETTE_DEFAULT_ROLLOUT";
/// palette-server, tests only: a file holding the RFC 3339 instant that
/// maintenance windows are judged at (an injected clock).
pub const TEST_CLOCK_FILE: &str = "PALETTE_TEST_CLOCK_FILE";

/// palettectl: the server's base URL (`--server`).
pub const SERVER: &str = "PALETTE_SERVER";
/// palettectl: the operator token (`--token`).
pub const TOKEN: &str = "PALETTE_TOKEN";
/// palettectl: an extra CA certificate to trust (`--ca-file`).
pub const CA_FILE: &str = "PALETTE_CA_FILE";

/// Tests only: the manager dies at the named crash point (e.g.
/// `update:switched`). Honoured only by debug builds with the cargo feature
/// `fault-injection`; release builds refuse that feature.
pub const CRASH_AT: &str = "PALETTE_CRASH_AT";
/// Tests only: at the named crash point the manager SIGKILLs the watchdog
/// (the one holding `state/watchdog.lock`) and carries on — the watchdog's
/// half of the fault-injection suite. Same conditions as `CRASH_AT`.
pub const KILL_WATCHDOG_AT: &str = "PALETTE_KILL_WATCHDOG_AT";
/// Tests only: with `CRASH_AT`, the manager dies at that point once per
/// install folder (it leaves `state/fault-crashed-<point>` behind), like a
/// single `kill -9` there: the runs that follow pass the point.
pub const CRASH_ONCE: &str = "PALETTE_CRASH_ONCE";
