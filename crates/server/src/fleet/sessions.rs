//! Dashboard sessions as the fleet keeps them: in the store, as hashes
//! only (the cookie's and the token's), so every replica knows them and an
//! ended one is gone for all. Must not: know cookies or HTTP (`http::ui`).

use palette_protocol::timefmt::Millis;

use super::Fleet;
use crate::store::{StoreResult, UiSessionRow};

impl Fleet {
    /// Stores a new dashboard session.
    pub async fn open_ui_session(&self, row: &UiSessionRow, now: Millis) -> StoreResult<()> {
        self.store.insert_ui_session(row, now).await
    }

    /// Ends a dashboard session (for every replica).
    pub async fn end_ui_session(&self, id_hash: &str) -> StoreResult<()> {
        self.store.delete_ui_session(id_hash).await
    }
}
