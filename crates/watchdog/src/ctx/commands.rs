//! The v2 commands handed to the controller and not acknowledged yet: a
//! redelivery meanwhile is neither performed nor acknowledged, and the
//! check-in loop counts them against its bound of held acknowledgements.
//!
//! Must not: hold the commands themselves or their outcomes (the
//! controller's queue and the durable state do); only their ids.

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Default)]
pub struct InFlight {
    ids: Mutex<HashSet<i64>>,
}

impl InFlight {
    /// Marks `id` as handed to the controller; `false` if it already was.
    pub fn start(&self, id: i64) -> bool {
        self.ids.lock().unwrap().insert(id)
    }

    /// The controller acknowledged `id`.
    pub fn finished(&self, id: i64) {
        self.ids.lock().unwrap().remove(&id);
    }

    /// How many commands the controller is performing or has queued.
    pub fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.ids.lock().unwrap().contains(&id)
    }
}
