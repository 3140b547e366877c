//! Maintenance windows: a weekly schedule in a stated time zone, such as
//! `Sat,Sun 01:00-05:00` in `Europe/Paris`, outside of which no host of the
//! window's group starts an update. Days are `Mon`..`Sun`, ranges
//! (`Mon-Fri`) and lists, or `daily`; a window may run past midnight
//! (`Fri 22:00-02:00` ends Saturday at 02:00). Time zones come from the IANA
//! database (jiff), so daylight-saving changes are followed. Pure: the
//! instant is passed in.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A parsed weekly window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Days the window starts on, Monday = 0.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u16,
    end: u16,
    tz: TimeZone,
}

/// Why a window is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{0:?} is not a schedule like \"Sat,Sun 01:00-05:00\", \"Mon-Fri 22:00-02:00\" or \"daily 02:00-04:00\"")]
    Schedule(String),
    #[error(
        "{0:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range like Mon-Fri, or daily)"
    )]
    Day(String),
    #[error("{0:?} is not a time of day (HH:MM, 00:00 to 24:00)")]
    Time(String),
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Paris or UTC)")]
    Zone(String),
    #[error("the window starts and ends at the same time")]
    Empty,
}

fn day(s: &str) -> Option<usize> {
    let d = match s.to_ascii_lowercase().get(..3)? {
        "mon" => 0,
        "tue" => 1,
        "wed" => 2,
        "thu" => 3,
        "fri" => 4,
        "sat" => 5,
        "sun" => 6,
        _ => return None,
    };
    Some(d)
}

fn minutes(s: &str) -> Result<u16, WindowError> {
    let bad = || WindowError::Time(s.to_string());
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) || s.len() > 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Window {
    pub fn parse(schedule: &str, tz: &str) -> Result<Window, WindowError> {
        let tz_parsed = TimeZone::get(tz).map_err(|_| WindowError::Zone(tz.to_string()))?;
        let (days_s, times) = schedule
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| WindowError::Schedule(schedule.to_string()))?;
        let (a, b) = times
            .trim()
            .split_once('-')
            .ok_or_else(|| WindowError::Schedule(schedule.to_string()))?;
        let (start, end) = (minutes(a.trim())?, minutes(b.trim())?);
        if start == end {
            return Err(WindowError::Empty);
        }
        let mut days = [false; 7];
        if days_s.eq_ignore_ascii_case("daily") || days_s == "*" {
            days = [true; 7];
        } else {
            for part in days_s.split(',') {
                let bad = || WindowError::Day(part.to_string());
                match part.split_once('-') {
                    Some((x, y)) => {
                        let (x, y) = (day(x).ok_or_else(bad)?, day(y).ok_or_else(bad)?);
                        let mut d = x;
                        loop {
                            days[d] = true;
                            if d == y {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => {
                        if part.len() > 9 {
                            return Err(bad());
                        }
                        days[day(part).ok_or_else(bad)?] = true
                    }
                }
            }
        }
        Ok(Window {
            days,
            start,
            end,
            tz: tz_parsed,
        })
    }

    /// Whether the window is open at `at_ms` (milliseconds since the epoch).
    pub fn is_open(&self, at_ms: i64) -> bool {
        let Ok(ts) = Timestamp::from_millisecond(at_ms) else {
            return false;
        };
        let z = ts.to_zoned(self.tz.clone());
        let d = match z.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        let m = z.hour() as u16 * 60 + z.minute() as u16;
        if self.start < self.end {
            self.days[d] && self.start <= m && m < self.end
        } else {
            // Past midnight: from `start` on its day to `end` the next day.
            (self.days[d] && m >= self.start) || (self.days[(d + 6) % 7] && m < self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn a_window_in_a_time_zone() {
        // Saturday 28 November 2026; Paris is UTC+1 in winter.
        let w = Window::parse("Sat,Sun 01:00-05:00", "Europe/Paris").unwrap();
        assert!(!w.is_open(at("2026-11-27T23:59:00Z")), "00:59 in Paris");
        assert!(w.is_open(at("2026-11-28T00:00:00Z")), "01:00 in Paris");
        assert!(w.is_open(at("2026-11-29T03:59:00Z")), "Sunday 04:59");
        assert!(!w.is_open(at("2026-11-28T04:00:00Z")), "05:00 in Paris");
        assert!(!w.is_open(at("2026-11-30T00:30:00Z")), "Monday");
        // Summer time: UTC+2.
        assert!(w.is_open(at("2026-06-27T23:30:00Z")), "Saturday 01:30 CEST");
    }

    #[test]
    fn past_midnight_ranges_and_daily() {
        let w = Window::parse("Mon-Fri 22:00-02:00", "UTC").unwrap();
        assert!(w.is_open(at("2026-11-27T23:00:00Z")), "Friday 23:00");
        assert!(
            w.is_open(at("2026-11-28T01:00:00Z")),
            "Saturday 01:00, Friday's window"
        );
        assert!(!w.is_open(at("2026-11-28T23:00:00Z")), "Saturday 23:00");
        assert!(
            !w.is_open(at("2026-11-30T01:00:00Z")),
            "Monday 01:00: Sunday has none"
        );
        let d = Window::parse("daily 00:00-24:00", "UTC").unwrap();
        assert!(d.is_open(at("2026-11-30T12:00:00Z")));
        let wrap = Window::parse("Sat-Mon 10:00-11:00", "UTC").unwrap();
        assert!(
            wrap.is_open(at("2026-11-29T10:30:00Z")),
            "Sunday within Sat-Mon"
        );
        assert!(!wrap.is_open(at("2026-12-01T10:30:00Z")), "Tuesday");
    }

    #[test]
    fn bad_windows_say_why() {
        assert!(matches!(
            Window::parse("Sat 01:00-05:00", "Mars/Olympus"),
            Err(WindowError::Zone(_))
        ));
        assert!(matches!(
            Window::parse("Caturday 01:00-05:00", "UTC"),
            Err(WindowError::Day(_))
        ));
        assert!(matches!(
            Window::parse("Sat 25:00-05:00", "UTC"),
            Err(WindowError::Time(_))
        ));
        assert!(matches!(
            Window::parse("Sat 01:00", "UTC"),
            Err(WindowError::Schedule(_))
        ));
        assert!(matches!(
            Window::parse("Sat 01:00-01:00", "UTC"),
            Err(WindowError::Empty)
        ));
    }
}
