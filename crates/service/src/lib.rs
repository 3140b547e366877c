//! Service control for the supervised agent: one trait, several backends.
//!
//! Owns: starting, stopping and observing the agent — as the watchdog's own
//! child in its own process group (`process`, the embedded default),
//! through operator-given commands such as `systemctl` (`command`), or as a
//! Windows service through the service control manager (`scm`).
//!
//! Must not: decide *whether* the agent should run (that policy — desired
//! state, restart backoff — belongs to the watchdog), or branch on the OS
//! outside `platform`.

mod command;
mod platform;
mod process;
mod scm;

use async_trait::async_trait;
use thiserror::Error;
use tokio::sync::broadcast;

pub use command::{CommandService, CommandSpec};
pub use platform::{
    kill_process, process_alive, spawn_detached, start_time, terminate_group, terminate_process,
};
pub use process::{Adoption, CommandLine, ProcessService, ProcessSpec};
pub use scm::{ScmService, ScmSpec};

/// Why a service operation failed.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open the agent log {path}")]
    Log {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent command could not be worked out")]
    Resolve(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the {what} command is empty")]
    EmptyCommand { what: &'static str },
    #[error("{what} command {program} exited with {status}: {stderr}")]
    CommandFailed {
        what: &'static str,
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{what} command {program} did not finish within {secs} s")]
    CommandTimeout {
        what: &'static str,
        program: String,
        secs: u64,
    },
    #[error("the agent did not stop within {secs} s, even after a kill")]
    StopTimeout { secs: u64 },
    #[error("{0} is not supported here")]
    Unsupported(&'static str),
    #[error("Windows service {service}: {what} failed: {message}")]
    Scm {
        service: String,
        what: &'static str,
        message: String,
    },
}

/// Whether the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running { pid: Option<u32> },
    Stopped,
}

impl Status {
    pub fn is_running(self) -> bool {
        matches!(self, Status::Running { .. })
    }
}

/// A change the backend saw as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        pid: u32,
    },
    /// The agent exited; `how` is its exit status as text; `ran_ms` how
    /// long it had run.
    Exited {
        pid: u32,
        how: String,
        ran_ms: u64,
    },
}

/// Start, stop and watch one service.
#[async_trait]
pub trait ServiceControl: Send + Sync {
    /// Starts the service; a no-op when it runs.
    async fn start(&self) -> Result<(), ServiceError>;
    /// Stops the service; a no-op when it is stopped.
    async fn stop(&self) -> Result<(), ServiceError>;
    async fn restart(&self) -> Result<(), ServiceError> {
        self.stop().await?;
        self.start().await
    }
    async fn status(&self) -> Result<Status, ServiceError>;
    /// State changes as they happen, where the backend can see them.
    fn events(&self) -> Option<broadcast::Receiver<Event>>;
    /// A short name for logs.
    fn backend(&self) -> &'static str;
}
