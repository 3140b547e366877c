//! Domain and store errors as HTTP status codes: the one place that maps
//! a fact (a full disk, a busy database, a conflict) to a status. Must not:
//! decide anything from an error's text.

use axum::http::StatusCode;

use crate::store::StoreError;

/// The status a store failure is answered with.
pub fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}
