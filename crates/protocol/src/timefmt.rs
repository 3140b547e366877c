//! Instants on the wire: RFC 3339 UTC. The legacy v1 command `ts` has whole
//! seconds (`2026-11-27T08:20:26Z`); v2 uses milliseconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, the unit every store column uses.
pub type Millis = i64;

/// Formats `ms` as RFC 3339 UTC with whole seconds (the v1 `ts`).
pub fn rfc3339_secs(ms: Millis) -> String {
    let dt = to_datetime(ms.div_euclid(1000) * 1000);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&f).expect("formatting a valid instant")
}

/// Formats `ms` as RFC 3339 UTC with milliseconds (v2).
pub fn rfc3339_millis(ms: Millis) -> String {
    let dt = to_datetime(ms);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&f).expect("formatting a valid instant")
}

/// Parses any RFC 3339 instant into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<Millis, time::error::Parse> {
    let dt = OffsetDateTime::parse(s, &Rfc3339)?;
    Ok((dt.unix_timestamp_nanos() / 1_000_000) as Millis)
}

fn to_datetime(ms: Millis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let ms = 1_795_767_626_123; // 2026-11-27T08:20:26.123Z
        assert_eq!(rfc3339_secs(ms), "2026-11-27T08:20:26Z");
        assert_eq!(rfc3339_millis(ms), "2026-11-27T08:20:26.123Z");
        assert_eq!(parse_rfc3339("2026-11-27T08:20:26Z").unwrap(), ms - 123);
        assert_eq!(parse_rfc3339("2026-11-27T08:20:26.123Z").unwrap(), ms);
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
