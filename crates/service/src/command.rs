//! The command backend: the agent is run by something else (systemd, SysV,
//! OpenRC, a Windows service manager) and controlled through operator-given
//! start / stop / status commands. `status` exiting 0 means running.
//! Exits are seen only by polling `status`.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{Event, ServiceControl, ServiceError, Status};

/// The three commands, each a program and its arguments.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub start: Vec<String>,
    pub stop: Vec<String>,
    pub status: Vec<String>,
    pub timeout: Duration,
}

pub struct CommandService {
    spec: CommandSpec,
}

impl CommandService {
    pub fn new(spec: CommandSpec) -> Self {
        CommandService { spec }
    }

    async fn run(
        &self,
        what: &'static str,
        argv: &[String],
    ) -> Result<std::process::Output, ServiceError> {
        let (program, args) = argv
            .split_first()
            .ok_or(ServiceError::EmptyCommand { what })?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(self.spec.timeout, cmd.output())
            .await
            .map_err(|_| ServiceError::CommandTimeout {
                what,
                program: program.clone(),
                secs: self.spec.timeout.as_secs(),
            })?
            .map_err(|source| ServiceError::Spawn {
                program: program.clone(),
                source,
            })?;
        Ok(out)
    }

    async fn run_checked(&self, what: &'static str, argv: &[String]) -> Result<(), ServiceError> {
        let out = self.run(what, argv).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ServiceError::CommandFailed {
                what,
                program: argv[0].clone(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

#[async_trait]
impl ServiceControl for CommandService {
    async fn start(&self) -> Result<(), ServiceError> {
        if self.status().await?.is_running() {
            return Ok(());
        }
        self.run_checked("start", &self.spec.start).await
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        if !self.status().await?.is_running() {
            return Ok(());
        }
        self.run_checked("stop", &self.spec.stop).await
    }

    async fn status(&self) -> Result<Status, ServiceError> {
        let out = self.run("status", &self.spec.status).await?;
        Ok(if out.status.success() {
            Status::Running { pid: None }
        } else {
            Status::Stopped
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<Event>> {
        None
    }

    fn backend(&self) -> &'static str {
        "command"
    }
}
