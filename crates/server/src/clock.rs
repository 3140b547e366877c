//! The server's clock: milliseconds since the Unix epoch, as every record
//! and wire type counts time. Owns nothing else; imports nothing of the
//! crate.

use palette_protocol::timefmt::Millis;

/// Now, in milliseconds since the epoch (0 for a clock before 1970).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
