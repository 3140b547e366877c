//! The watchdog's durable state, `state/watchdog.json`, written atomically
//! on every change: the operator's desired agent state (a commanded `stop`
//! survives a restart), which commands were performed (a command delivered
//! twice is performed once), acknowledgements not yet delivered, the
//! applied config revision and the last update's outcome.
//!
//! Must not: decide anything on what it holds (callers do), or import any
//! other module of the watchdog; a failed write is kept in memory and
//! written again (`retry_save`), never dropped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use palette_protocol::v2::{CommandAck, DesiredState, Outcome, UpdateReport};
use serde::{Deserialize, Serialize};

const PERFORMED_KEEP: usize = 512;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Durable {
    pub desired: DesiredState,
    /// v2 command ids already performed (newest last) and their outcome.
    pub performed: VecDeque<(i64, Outcome)>,
    /// Acknowledgements not yet delivered to the server.
    pub pending_acks: Vec<CommandAck>,
    /// The last legacy v1 command performed: (ts, word).
    pub legacy_last: Option<(String, String)>,
    /// The desired config revision last applied.
    pub config_revision: Option<i64>,
    /// SHA-256 of the Config.yml last reported to the server.
    pub reported_config_sha: Option<String>,
    pub last_update: Option<UpdateReport>,
    /// The outcome of the last watchdog self-update attempt.
    pub last_watchdog_update: Option<UpdateReport>,
    /// Releases (agent or watchdog) that failed to install or failed their health check; not
    /// retried until the server offers another.
    pub failed_releases: Vec<i64>,
    /// The server store the ids above belong to (its `store_id`).
    pub store_id: Option<String>,
}

impl Durable {
    /// Notes the store a check-in answer came from. Ids are unique only
    /// within one store: when the server's store is another one (restored,
    /// replaced), what was keyed by the old store's ids is forgotten, so a
    /// new command is never skipped as "already performed". Returns the old
    /// store's id when it changed.
    pub fn switch_store(&mut self, store_id: &str) -> Option<String> {
        match self.store_id.as_deref() {
            Some(old) if old != store_id => {
                let old = old.to_string();
                self.performed.clear();
                self.pending_acks.clear();
                self.failed_releases.clear();
                self.config_revision = None;
                self.store_id = Some(store_id.to_string());
                Some(old)
            }
            Some(_) => None,
            None => {
                // First answer with an identity (or a watchdog that predates
                // store ids): what it recorded came from this store.
                self.store_id = Some(store_id.to_string());
                None
            }
        }
    }

    pub fn performed(&self, id: i64) -> Option<Outcome> {
        self.performed
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, o)| *o)
    }

    pub fn mark_performed(&mut self, id: i64, outcome: Outcome) {
        self.performed.retain(|(i, _)| *i != id);
        self.performed.push_back((id, outcome));
        while self.performed.len() > PERFORMED_KEEP {
            self.performed.pop_front();
        }
    }
}

/// The state and where it lives; cheap to clone.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    inner: Arc<Mutex<Durable>>,
    /// Why the last save failed (a full or failing disk); `None` once a
    /// save worked again. Reported to the server with every check-in.
    trouble: Arc<Mutex<Option<String>>>,
}

/// The second durable copy, written after the first: a damaged
/// `watchdog.json` never forgets an operator's `stop`.
fn backup_of(path: &std::path::Path) -> PathBuf {
    path.with_extension("json.bak")
}

impl Store {
    /// Loads the file; a damaged one is set aside (never silently
    /// overwritten) and the second copy is used; only when both are
    /// unreadable are the defaults used.
    pub fn open(path: PathBuf) -> Self {
        let backup = backup_of(&path);
        let state = match palette_host::fsx::read_json::<Durable>(&path) {
            Ok(Some(s)) => s,
            Ok(None) => match palette_host::fsx::read_json::<Durable>(&backup) {
                Ok(Some(s)) => {
                    tracing::warn!(path = %path.display(), "durable state missing; restored from its second copy");
                    s
                }
                _ => Durable::default(),
            },
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                let _ = fs_err::rename(&path, &aside);
                match palette_host::fsx::read_json::<Durable>(&backup) {
                    Ok(Some(s)) => {
                        tracing::error!(error = %e, aside = %aside.display(), desired = ?s.desired, "durable state unreadable; set aside and restored from its second copy");
                        s
                    }
                    _ => {
                        tracing::error!(error = %e, aside = %aside.display(), "durable state and its second copy unreadable; set aside, starting from defaults");
                        Durable::default()
                    }
                }
            }
        };
        let store = Store {
            path,
            inner: Arc::new(Mutex::new(state)),
            trouble: Arc::new(Mutex::new(None)),
        };
        store.update(|_| ());
        store
    }

    pub fn get(&self) -> Durable {
        self.inner.lock().unwrap().clone()
    }

    /// Changes the state and writes it before returning.
    pub fn update<R>(&self, f: impl FnOnce(&mut Durable) -> R) -> R {
        let mut guard = self.inner.lock().unwrap();
        let r = f(&mut guard);
        self.save(&guard);
        r
    }

    /// Saves again after a failed save (called at each check-in): the
    /// state in memory reaches the disk as soon as it has room.
    pub fn retry_save(&self) {
        if self.trouble().is_some() {
            let guard = self.inner.lock().unwrap();
            self.save(&guard);
        }
    }

    /// Why the durable state cannot be saved now, if it cannot.
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap().clone()
    }

    fn save(&self, state: &Durable) {
        let mut failed = None;
        for path in [self.path.clone(), backup_of(&self.path)] {
            if let Err(e) = palette_host::fsx::write_json(&path, state) {
                failed.get_or_insert(format!(
                    "cannot save the watchdog's state to {}: {e}; it is kept in memory and saved as soon as the disk allows",
                    path.display()
                ));
            }
        }
        let mut trouble = self.trouble.lock().unwrap();
        match (&*trouble, &failed) {
            (None, Some(why)) => tracing::error!("{why}"),
            (Some(_), None) => tracing::info!("the watchdog's state is saved again"),
            (Some(_), Some(why)) => tracing::debug!("{why}"),
            (None, None) => {}
        }
        *trouble = failed;
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    /// A save that fails is reported (`trouble`), the state kept in memory,
    /// and saved by the next retry once the disk allows it.
    #[test]
    fn a_failed_save_is_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let store = Store::open(state.join("watchdog.json"));
        assert_eq!(store.trouble(), None);
        // The folder is replaced by a file: every write fails.
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, b"not a folder").unwrap();
        store.update(|d| d.desired = DesiredState::Stopped);
        let why = store.trouble().expect("the failure is reported");
        assert!(why.contains("cannot save the watchdog's state"), "{why}");
        assert_eq!(store.get().desired, DesiredState::Stopped, "kept in memory");
        // Room again: the retry saves it and the trouble is gone.
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        store.retry_save();
        assert_eq!(store.trouble(), None);
        let saved = Store::open(state.join("watchdog.json"));
        assert_eq!(saved.get().desired, DesiredState::Stopped);
    }
}
