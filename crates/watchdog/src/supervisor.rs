//! Keep-alive: the agent runs whenever the operator's desired state says
//! so. Exits are seen at once where the backend reports them (the process
//! backend), and by a periodic status check everywhere; a stopped agent is
//! restarted with exponential backoff (reset after a stable run), unless an
//! operator commanded `stop` — a desired state kept in `state/` that
//! survives a watchdog restart. Updates pause supervision while the manager
//! works.
//!
//! Must not: install, update or reconfigure the agent, or talk to the
//! server; it only keeps the agent in its desired state through the
//! service backend.

use std::sync::Arc;
use std::time::Duration;

use palette_protocol::v2::{AgentState, DesiredState};
use palette_service::{Event, ServiceControl, ServiceError};
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::durable;

#[derive(Debug, Clone)]
pub struct Policy {
    pub keepalive: Duration,
    pub restart_first: Duration,
    pub restart_max: Duration,
    pub stable: Duration,
}

struct Inner {
    paused: bool,
}

#[derive(Clone)]
pub struct Supervisor {
    svc: Arc<dyn ServiceControl>,
    state: durable::Store,
    inner: Arc<Mutex<Inner>>,
    policy: Policy,
}

impl Supervisor {
    pub fn new(svc: Arc<dyn ServiceControl>, state: durable::Store, policy: Policy) -> Self {
        Supervisor {
            svc,
            state,
            inner: Arc::new(Mutex::new(Inner { paused: false })),
            policy,
        }
    }

    pub fn service(&self) -> &Arc<dyn ServiceControl> {
        &self.svc
    }

    pub fn desired(&self) -> DesiredState {
        self.state.get().desired
    }

    async fn should_run(&self) -> bool {
        !self.inner.lock().await.paused && self.desired() == DesiredState::Running
    }

    pub async fn agent_state(&self) -> AgentState {
        match self.svc.status().await {
            Ok(s) if s.is_running() => AgentState::Running,
            Ok(_) => AgentState::Stopped,
            Err(_) => AgentState::Unknown,
        }
    }

    /// Records the operator's wish and acts on it.
    pub async fn set_desired(&self, desired: DesiredState) -> Result<(), ServiceError> {
        self.state.update(|d| d.desired = desired);
        let inner = self.inner.lock().await;
        if inner.paused {
            return Ok(());
        }
        match desired {
            DesiredState::Running => self.svc.start().await,
            DesiredState::Stopped => self.svc.stop().await,
        }
    }

    /// `restart`: the agent runs afterwards (desired state becomes running).
    /// While paused (an update installs) only the wish is recorded.
    pub async fn restart(&self) -> Result<(), ServiceError> {
        self.state.update(|d| d.desired = DesiredState::Running);
        let inner = self.inner.lock().await;
        if inner.paused {
            return Ok(());
        }
        self.svc.restart().await
    }

    /// Restarts the agent only if it runs now (after a config change).
    pub async fn restart_if_running(&self) -> Result<bool, ServiceError> {
        let _inner = self.inner.lock().await;
        if self.svc.status().await?.is_running() {
            self.svc.restart().await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Stops the agent and suspends keep-alive (an update is running).
    pub async fn pause(&self) -> Result<(), ServiceError> {
        let mut inner = self.inner.lock().await;
        inner.paused = true;
        self.svc.stop().await
    }

    /// Ends a pause; starts the agent if the operator wants it running.
    pub async fn resume(&self) -> Result<(), ServiceError> {
        let mut inner = self.inner.lock().await;
        inner.paused = false;
        if self.desired() == DesiredState::Running {
            self.svc.start().await
        } else {
            Ok(())
        }
    }

    /// Runs the keep-alive until the process ends.
    /// Subscribes to the backend's events now (so no exit between this call
    /// and the first poll of the future is missed) and returns the loop.
    pub fn keep_alive(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let events = self.svc.events();
        async move {
            tokio::select! {
                _ = self.keep_alive_with(events) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    async fn keep_alive_with(self, mut events: Option<tokio::sync::broadcast::Receiver<Event>>) {
        let mut backoff = Backoff::new(self.policy.restart_first, self.policy.restart_max);
        // The first periodic check comes one interval from now: the caller
        // has just started the agent, and exits are handled as events.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.policy.keepalive,
            self.policy.keepalive,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let exited = tokio::select! {
                _ = tick.tick() => None,
                ev = async {
                    match events.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match ev {
                    Ok(Event::Exited { pid, how, ran_ms }) => Some((pid, how, ran_ms)),
                    Ok(Event::Started { .. }) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        events = None;
                        None
                    }
                },
            };
            if let Some((pid, how, ran_ms)) = &exited {
                if Duration::from_millis(*ran_ms) >= self.policy.stable {
                    backoff.reset();
                }
                if !self.should_run().await {
                    tracing::info!(
                        pid,
                        how,
                        "agent exited (stop was commanded or an update is running)"
                    );
                    continue;
                }
                // A restart in progress starts the agent itself; wait the
                // backoff delay, then look again.
                tokio::time::sleep(backoff.next_delay()).await;
            }
            if !self.should_run().await {
                continue;
            }
            let inner = self.inner.lock().await;
            if inner.paused || self.desired() != DesiredState::Running {
                continue;
            }
            match self.svc.status().await {
                Ok(s) if s.is_running() => {}
                Ok(_) => {
                    match &exited {
                        Some((pid, how, ran_ms)) => {
                            tracing::warn!(
                                pid,
                                how,
                                ran_ms,
                                "agent exited unexpectedly; restarting it"
                            )
                        }
                        None => tracing::warn!(
                            "agent found not running at the keep-alive check; starting it"
                        ),
                    }
                    match self.svc.start().await {
                        Ok(()) => tracing::info!("agent started"),
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::error!(error = %e, source = ?std::error::Error::source(&e), retry_ms = delay.as_millis() as u64, "could not start the agent");
                            drop(inner);
                            tokio::time::sleep(delay).await;
                            tick.reset_immediately();
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not read the agent's status"),
            }
        }
    }
}
