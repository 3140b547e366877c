//! The watchdog's errors, one enum per concern, each variant carrying the
//! facts; decisions (retry, refuse, report) are made on variants. Messages
//! for operators are rendered from them with their causes (`chain`).
//!
//! Must not: log, retry or map errors to outcomes — the modules that
//! raise them do; it knows only the client's error type.

use std::path::PathBuf;

use palette_host::agent_config::ConfigError;
use palette_service::ServiceError;
use thiserror::Error;

use crate::client::ClientError;

/// Why a command or a config action failed. Nothing was changed unless the
/// variant says so.
#[derive(Debug, Error)]
pub enum ActionError {
    #[error("cannot read {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is unusable")]
    BadConfig {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("cannot set up the connection to the server")]
    Client(#[source] ClientError),
    #[error("uploading Config.yml failed")]
    Upload(#[source] ClientError),
    #[error("downloading the new Config.yml failed")]
    Download(#[source] ClientError),
    #[error("cannot stage the new config")]
    Stage(#[source] std::io::Error),
    #[error("new Config.yml refused")]
    Refused(#[source] ConfigError),
    #[error("new Config.yml refused: the connection it describes cannot be set up")]
    RefusedClient(#[source] ClientError),
    #[error("new Config.yml refused: its endpoint {endpoint} does not accept its license key")]
    LicenseRefused {
        endpoint: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot replace {path}")]
    Replace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The new config is in place; only the restart failed.
    #[error("{applied}, but restarting the agent failed")]
    RestartAfterApply {
        applied: String,
        #[source]
        source: ServiceError,
    },
    #[error("the agent could not be controlled")]
    Service(#[from] ServiceError),
    /// The new config was put back to the previous one.
    #[error("the agent was not healthy on the new Config.yml ({why}); the previous file was restored{restart}; agent log: {log}")]
    ConfigRolledBack {
        why: String,
        restart: String,
        log: String,
    },
    #[error("unknown command kind: this watchdog ({version}) cannot perform it; nothing was done")]
    UnknownCommand { version: &'static str },
}

/// Why the agent's command line cannot be worked out.
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("no agent version is installed ({pointer} is missing or unusable)")]
    NoCurrent { pointer: PathBuf },
    #[error("agent.command is empty")]
    EmptyCommand,
}

/// Why a manager step failed.
#[derive(Debug, Error)]
pub enum ManagerError {
    #[error("cannot put the manager in place at {path}")]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manager {op} failed: {reason}")]
    Failed {
        op: String,
        reason: String,
        /// The local disk's trouble (full, read-only, failing): passing.
        local_io: bool,
    },
    #[error("manager {op} exited with {status} without a result; its last output: {last}")]
    NoResult {
        op: String,
        status: String,
        last: String,
    },
}

impl ManagerError {
    /// Whether the failure was the local disk's or the host's (passing:
    /// retried later) rather than the release's.
    pub fn is_local_trouble(&self) -> bool {
        match self {
            ManagerError::Failed { local_io, .. } => *local_io,
            ManagerError::Copy { source, .. } | ManagerError::Spawn { source, .. } => {
                palette_host::fsx::is_local_disk_trouble(source)
            }
            ManagerError::NoResult { .. } => false,
        }
    }
}

/// Why a new version failed its health check.
#[derive(Debug, Error)]
pub enum HealthError {
    #[error("it did not start")]
    DidNotStart(#[source] ServiceError),
    #[error("it exited with {0}")]
    Exited(String),
    #[error("it was not running {0} s after the start")]
    NotRunning(u64),
    #[error("its health probe failed: {0}")]
    Probe(ProbeError),
}

/// Why one try of the agent's health probe failed (one line).
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("health command word {word:?}: {error}")]
    Expand { word: String, error: ResolveError },
    #[error("health command {program:?} took longer than {secs} s")]
    TimedOut { program: String, secs: u64 },
    #[error("health command {program:?} could not run: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("health command {program:?} exited with {status}: {last_line}")]
    Failed {
        program: String,
        status: String,
        last_line: String,
    },
    #[error("health URL {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("health URL {url} answered {status}")]
    Status { url: String, status: u16 },
}

/// Why a new watchdog's self-check failed: the manager it came with does
/// not answer as one.
#[derive(Debug, Error)]
pub enum SelfCheckError {
    #[error("{exe} --version did not answer within {secs} s")]
    TimedOut { exe: String, secs: u64 },
    #[error("{exe} cannot be run: {error}")]
    Spawn { exe: String, error: std::io::Error },
    #[error("{exe} --version failed ({status}): {stderr}")]
    Failed {
        exe: String,
        status: String,
        stderr: String,
    },
}

/// An error with its causes on one line, for logs and operators.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
