//! The controller: the one task that acts on this host. It owns the agent
//! (through the [`Supervisor`]), the command bookkeeping of the durable
//! state and the update state machine, and is driven by typed [`Msg`]s:
//!
//! - `Perform` — from the transports (`v2loop`, `v1loop`): a command to
//!   carry out; for v2 the acknowledgement is queued in the durable state
//!   and the transport is woken to deliver it at once.
//! - `Offer` — from the transports: the release the server wants here.
//!   Installing runs as a job beside the controller, so check-ins, commands
//!   and acknowledgements go on while it downloads.
//! - `UpdateEnded` — from the job.
//! - `Ping` — from the liveness pinger (systemd's `WatchdogSec`).
//!
//! Order while an update runs: during the download a `stop` cancels it and
//! stops the agent, and a newer release supersedes it (other commands run
//! at once); from the moment the agent is stopped for the install until the
//! new version passed or failed its health check, commands wait and then
//! run in the order they came. No update starts while an operator's `stop`
//! is in force. Shutdown comes through a `CancellationToken`: a download
//! ends, a running manager is left to finish (the next watchdog waits for
//! it).
//!
//! Must not: talk to the server (the transports deliver what it queues in
//! the durable state) or carry out an update's steps (the job does); it
//! imports neither the transports nor `run`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use palette_protocol::v2::{CommandAck, CommandKind, DesiredState, Outcome};
use palette_protocol::Version;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actions;
use crate::client::Client;
use crate::ctx::Ctx;
use crate::error::chain;
use crate::job::{self, Ended};
use crate::offer::{Candidate, Product};

/// A message for the controller.
pub enum Msg {
    /// Carry out a command; `id` is the v2 command id (none for legacy v1).
    Perform { id: Option<i64>, kind: CommandKind },
    /// The server offers this release.
    Offer {
        cand: Box<Candidate>,
        client: Client,
    },
    /// Answer when the controller is free (liveness).
    Ping(oneshot::Sender<()>),
}

/// How the transports reach the controller.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Msg>,
    /// Woken when an acknowledgement is ready to be delivered, or an update
    /// ended: the v2 transport checks in at once.
    pub news: Arc<Notify>,
}

impl Handle {
    /// Sends a message; `false` when the controller has shut down.
    pub async fn send(&self, msg: Msg) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// Whether the controller answers within `limit`.
    pub async fn responsive(&self, limit: std::time::Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.try_send(Msg::Ping(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

/// A command that waits for an installing update to end.
struct Deferred {
    id: Option<i64>,
    kind: CommandKind,
}

struct Job {
    product: Product,
    version: Version,
    release_id: i64,
    /// Set once the agent is about to be stopped: no cancelling after that.
    installing: Arc<AtomicBool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Controller {
    ctx: Arc<Ctx>,
    rx: mpsc::Receiver<Msg>,
    /// From update jobs: which one ended. Unbounded but holds at most one
    /// message per job, so a job never waits on a busy controller.
    ended_tx: mpsc::UnboundedSender<Version>,
    ended_rx: mpsc::UnboundedReceiver<Version>,
    news: Arc<Notify>,
    job: Option<Job>,
    deferred: VecDeque<Deferred>,
    shutdown: CancellationToken,
    /// An offer refused while stopped was logged (once per stop).
    said_stopped: bool,
}

/// Bound of the controller's queue: commands arrive a few at a time;
/// offers are sent only when something changes.
const QUEUE: usize = 64;

impl Controller {
    pub fn new(ctx: Arc<Ctx>, shutdown: CancellationToken) -> (Controller, Handle) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let news = Arc::new(Notify::new());
        let handle = Handle {
            tx,
            news: news.clone(),
        };
        (
            Controller {
                ctx,
                rx,
                ended_tx,
                ended_rx,
                news,
                job: None,
                deferred: VecDeque::new(),
                shutdown,
                said_stopped: false,
            },
            handle,
        )
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        loop {
            let msg = tokio::select! {
                m = self.rx.recv() => m,
                Some(version) = self.ended_rx.recv() => {
                    self.on_update_ended(version).await;
                    continue;
                }
                _ = self.shutdown.cancelled() => None,
            };
            let Some(msg) = msg else { break };
            match msg {
                Msg::Perform { id, kind } => self.on_command(id, kind).await,
                Msg::Offer { cand, client } => self.on_offer(*cand, client).await,
                Msg::Ping(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        if let Some(job) = self.job.take() {
            job.cancel.cancel();
            if !job.installing.load(Ordering::SeqCst) {
                let _ = job.task.await;
            } else {
                tracing::info!(version = %job.version, "shutting down during an install: the manager finishes it and the next watchdog checks it");
            }
        }
    }

    /// An agent update is past its download: commands wait for it. (A
    /// watchdog self-update never touches the agent: commands go on.)
    fn installing(&self) -> bool {
        self.job
            .as_ref()
            .is_some_and(|j| j.product == Product::Agent && j.installing.load(Ordering::SeqCst))
    }

    async fn on_command(&mut self, id: Option<i64>, kind: CommandKind) {
        if self.installing() {
            tracing::info!(
                ?id,
                command = kind.as_str(),
                "an update is installing; the command runs when it is done"
            );
            self.deferred.push_back(Deferred { id, kind });
            return;
        }
        let downloading_agent = self
            .job
            .as_ref()
            .is_some_and(|j| j.product == Product::Agent);
        if kind == CommandKind::Stop && downloading_agent {
            if let Some(job) = self.job.take() {
                tracing::info!(version = %job.version, "stop commanded during a download: cancelling the download");
                job.cancel.cancel();
                let _ = job.task.await;
                self.ctx.updates.clear_active();
            }
        }
        self.perform(id, kind).await;
    }

    async fn perform(&mut self, id: Option<i64>, kind: CommandKind) {
        tracing::info!(?id, command = kind.as_str(), "performing command");
        let (outcome, message) = match actions::perform(&self.ctx, kind).await {
            Ok(m) => (Outcome::Succeeded, m),
            Err(e) => (Outcome::Failed, chain(&e)),
        };
        match outcome {
            Outcome::Succeeded => {
                tracing::info!(?id, command = kind.as_str(), message, "command done")
            }
            Outcome::Failed => {
                tracing::error!(?id, command = kind.as_str(), message, "command failed")
            }
        }
        if kind == CommandKind::Start || kind == CommandKind::Restart {
            self.said_stopped = false;
        }
        if let Some(id) = id {
            let ack = CommandAck {
                id,
                hostname: self.ctx.hostname.clone(),
                outcome,
                message,
                at: String::new(),
            };
            self.ctx.durable.update(|d| {
                d.mark_performed(id, outcome);
                d.pending_acks.push(ack);
            });
            self.ctx.commands.finished(id);
            self.news.notify_one();
        }
    }

    async fn on_offer(&mut self, cand: Candidate, client: Client) {
        if let Some(job) = &self.job {
            if job.product != cand.product {
                return; // one update at a time; offered again later
            }
            if cand.version <= job.version || job.installing.load(Ordering::SeqCst) {
                return; // the same, older, or too late to change: offered again later
            }
            tracing::info!(pending = %job.version, newer = %cand.version, "a newer release supersedes the one downloading");
            let job = self.job.take().expect("checked above");
            job.cancel.cancel();
            let _ = job.task.await;
        }
        if cand.product == Product::Agent && self.ctx.supervisor.desired() == DesiredState::Stopped
        {
            if !self.said_stopped {
                tracing::info!(version = %cand.version, "a release is offered, but an operator commanded stop: updating after the next start");
                self.said_stopped = true;
            }
            self.ctx.updates.clear_active();
            return;
        }
        if !job::wanted(&self.ctx, &cand) {
            self.ctx.updates.clear_active();
            return;
        }
        self.start_job(cand, client);
    }

    fn start_job(&mut self, cand: Candidate, client: Client) {
        let installing = Arc::new(AtomicBool::new(false));
        let cancel = self.shutdown.child_token();
        let (ctx, tx) = (self.ctx.clone(), self.ended_tx.clone());
        let (inst, canc) = (installing.clone(), cancel.clone());
        let version = cand.version;
        let release_id = cand.release_id;
        let product = cand.product;
        self.ctx.updates.set_active(release_id);
        let task = tokio::spawn(async move {
            match job::run(&ctx, &client, cand, &canc, &inst).await {
                Ended::Cancelled => tracing::debug!(%version, "update job cancelled"),
                Ended::Reported(r) => {
                    tracing::debug!(%version, outcome = ?r.outcome, "update job reported")
                }
            }
            let _ = tx.send(version);
        });
        self.job = Some(Job {
            product,
            version,
            release_id,
            installing,
            cancel,
            task,
        });
    }

    async fn on_update_ended(&mut self, version: Version) {
        if self.job.as_ref().is_some_and(|j| j.version == version) {
            if let Some(job) = self.job.take() {
                let _ = job.task.await;
                tracing::debug!(release = job.release_id, "update job finished");
            }
            self.ctx.updates.clear_active();
        }
        while let Some(Deferred { id, kind }) = self.deferred.pop_front() {
            self.perform(id, kind).await;
        }
        // Report the outcome (and any acknowledgement) at once.
        self.news.notify_one();
    }
}
