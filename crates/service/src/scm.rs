//! The Windows service backend: the agent is a Windows service (the legacy
//! Palette Insight Agent is one), started, stopped and watched through the
//! service control manager. Its exits are noticed within a second by a
//! monitor that polls the service's state AND whether the process the SCM
//! names still runs (a killed service can look RUNNING for a while — Wine's
//! SCM never notices). Elsewhere than on Windows the backend is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{broadcast, Mutex};

use crate::{Event, ServiceControl, ServiceError, Status};

/// Which service, and how long a start or stop may take.
#[derive(Debug, Clone)]
pub struct ScmSpec {
    pub name: String,
    pub timeout: Duration,
}

pub struct ScmService {
    spec: ScmSpec,
    events: broadcast::Sender<Event>,
    /// The pid last seen running, and since when (for `ran_ms`).
    seen: Arc<Mutex<Option<(u32, Instant)>>>,
}

/// How often the monitor looks at the service.
const POLL: Duration = Duration::from_millis(500);

impl ScmService {
    /// The backend for the service `spec.name`; refused where there is no
    /// Windows service control manager. Starts the monitor (call inside a
    /// tokio runtime).
    pub fn new(spec: ScmSpec) -> Result<Self, ServiceError> {
        crate::platform::scm::check(&spec.name)?;
        let svc = ScmService {
            spec,
            events: broadcast::channel(64).0,
            seen: Arc::new(Mutex::new(None)),
        };
        svc.monitor();
        Ok(svc)
    }

    fn monitor(&self) {
        let name = self.spec.name.clone();
        let events = self.events.clone();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                // Ends with the backend (the last other owner of `seen`).
                if Arc::strong_count(&seen) == 1 {
                    return;
                }
                let name2 = name.clone();
                let now =
                    tokio::task::spawn_blocking(move || crate::platform::scm::running_pid(&name2))
                        .await
                        .ok()
                        .flatten();
                let mut last = seen.lock().await;
                match (*last, now) {
                    (None, Some(pid)) => {
                        *last = Some((pid, Instant::now()));
                        let _ = events.send(Event::Started { pid });
                    }
                    (Some((pid, since)), None) => {
                        *last = None;
                        let _ = events.send(Event::Exited {
                            pid,
                            how: "the service stopped".into(),
                            ran_ms: since.elapsed().as_millis() as u64,
                        });
                    }
                    (Some((old, since)), Some(pid)) if old != pid => {
                        let _ = events.send(Event::Exited {
                            pid: old,
                            how: "the service stopped".into(),
                            ran_ms: since.elapsed().as_millis() as u64,
                        });
                        *last = Some((pid, Instant::now()));
                        let _ = events.send(Event::Started { pid });
                    }
                    _ => {}
                }
            }
        });
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(String, Duration) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (name, timeout) = (self.spec.name.clone(), self.spec.timeout);
        tokio::task::spawn_blocking(move || f(name, timeout))
            .await
            .map_err(|e| ServiceError::Scm {
                service: self.spec.name.clone(),
                what: "the service control call",
                message: e.to_string(),
            })?
    }
}

#[async_trait]
impl ServiceControl for ScmService {
    async fn start(&self) -> Result<(), ServiceError> {
        let pid = self
            .blocking(|name, timeout| {
                crate::platform::scm::start(&name, timeout)?;
                Ok(crate::platform::scm::running_pid(&name))
            })
            .await?;
        // Seen at once, not at the monitor's next poll: a service that
        // stops again before that poll is still noticed as an exit.
        if let Some(pid) = pid {
            let mut last = self.seen.lock().await;
            if last.map(|(p, _)| p) != Some(pid) {
                *last = Some((pid, Instant::now()));
                let _ = self.events.send(Event::Started { pid });
            }
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        self.blocking(|name, timeout| crate::platform::scm::stop(&name, timeout))
            .await
    }

    async fn status(&self) -> Result<Status, ServiceError> {
        let pid = self
            .blocking(|name, _| Ok(crate::platform::scm::running_pid(&name)))
            .await?;
        Ok(match pid {
            Some(pid) => Status::Running { pid: Some(pid) },
            None => Status::Stopped,
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<Event>> {
        Some(self.events.subscribe())
    }

    fn backend(&self) -> &'static str {
        "windows-service"
    }
}
