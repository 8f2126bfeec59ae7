//! Quiet hours in the recipient's local time, and which zone that is.
//!
//! The zone comes from the message's `recipient_timezone`, else from the number when its
//! country has a single zone, else the configured default. Arithmetic is done in civil time
//! with `jiff` (bundled tzdb), so DST transitions are handled: a window end that does not
//! exist on a spring-forward night resolves to the first instant after it.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Parses `HH:MM`.
pub fn parse_hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    let (h, m) = (h.parse::<i8>().ok()?, m.parse::<i8>().ok()?);
    Time::new(h, m, 0, 0).ok()
}

/// IANA zone of single-zone countries, by ISO 3166 region (libphonenumber's region codes).
/// Countries with several zones (US, CA, MX, BR, AU, RU, ID, …) are absent on purpose.
const SINGLE_ZONE: &[(&str, &str)] = &[
    ("AE", "Asia/Dubai"),
    ("AR", "America/Argentina/Buenos_Aires"),
    ("AT", "Europe/Vienna"),
    ("BE", "Europe/Brussels"),
    ("BG", "Europe/Sofia"),
    ("CH", "Europe/Zurich"),
    ("CN", "Asia/Shanghai"),
    ("CO", "America/Bogota"),
    ("CR", "America/Costa_Rica"),
    ("CZ", "Europe/Prague"),
    ("DE", "Europe/Berlin"),
    ("DK", "Europe/Copenhagen"),
    ("DO", "America/Santo_Domingo"),
    ("EG", "Africa/Cairo"),
    ("FI", "Europe/Helsinki"),
    ("FR", "Europe/Paris"),
    ("GB", "Europe/London"),
    ("GG", "Europe/London"),
    ("IM", "Europe/London"),
    ("JE", "Europe/London"),
    ("GH", "Africa/Accra"),
    ("GR", "Europe/Athens"),
    ("GT", "America/Guatemala"),
    ("HK", "Asia/Hong_Kong"),
    ("HR", "Europe/Zagreb"),
    ("HU", "Europe/Budapest"),
    ("IE", "Europe/Dublin"),
    ("IL", "Asia/Jerusalem"),
    ("IN", "Asia/Kolkata"),
    ("IS", "Atlantic/Reykjavik"),
    ("IT", "Europe/Rome"),
    ("JM", "America/Jamaica"),
    ("JP", "Asia/Tokyo"),
    ("KE", "Africa/Nairobi"),
    ("KR", "Asia/Seoul"),
    ("LU", "Europe/Luxembourg"),
    ("MA", "Africa/Casablanca"),
    ("MY", "Asia/Kuala_Lumpur"),
    ("NG", "Africa/Lagos"),
    ("NL", "Europe/Amsterdam"),
    ("NO", "Europe/Oslo"),
    ("NZ", "Pacific/Auckland"),
    ("PA", "America/Panama"),
    ("PE", "America/Lima"),
    ("PH", "Asia/Manila"),
    ("PK", "Asia/Karachi"),
    ("PL", "Europe/Warsaw"),
    ("PR", "America/Puerto_Rico"),
    ("RO", "Europe/Bucharest"),
    ("RS", "Europe/Belgrade"),
    ("SA", "Asia/Riyadh"),
    ("SE", "Europe/Stockholm"),
    ("SG", "Asia/Singapore"),
    ("SI", "Europe/Ljubljana"),
    ("SK", "Europe/Bratislava"),
    ("TH", "Asia/Bangkok"),
    ("TR", "Europe/Istanbul"),
    ("TW", "Asia/Taipei"),
    ("UA", "Europe/Kyiv"),
    ("UY", "America/Montevideo"),
    ("VE", "America/Caracas"),
    ("VN", "Asia/Ho_Chi_Minh"),
    ("ZA", "Africa/Johannesburg"),
];

/// The zone a number's country fixes, if it fixes one.
pub fn zone_of_number(e164: &str) -> Option<&'static str> {
    let code = crate::phone::region_of(e164)?;
    SINGLE_ZONE.iter().find(|(r, _)| *r == code).map(|(_, z)| *z)
}

/// The recipient's zone: explicit, else from the number, else `default`.
pub fn recipient_zone(explicit: Option<&str>, e164: &str, default: &str) -> TimeZone {
    explicit
        .and_then(|z| TimeZone::get(z).ok())
        .or_else(|| zone_of_number(e164).and_then(|z| TimeZone::get(z).ok()))
        .or_else(|| TimeZone::get(default).ok())
        .unwrap_or(TimeZone::UTC)
}

/// A daily quiet window `[start, end)` in local time (overnight when `end <= start`).
#[derive(Debug, Clone, Copy)]
pub struct QuietWindow {
    /// Start, local.
    pub start: Time,
    /// End, local.
    pub end: Time,
}

impl QuietWindow {
    fn contains(&self, t: Time) -> bool {
        if self.start <= self.end { t >= self.start && t < self.end } else { t >= self.start || t < self.end }
    }

    /// If `at_ms` falls in the window in `tz`, the instant the window ends (ms); else `None`.
    pub fn release_time(&self, at_ms: u64, tz: &TimeZone) -> Option<u64> {
        let ts = Timestamp::from_millisecond(at_ms as i64).ok()?;
        let local: Zoned = ts.to_zoned(tz.clone());
        if !self.contains(local.time()) {
            return None;
        }
        // The end is today if we are before it, else tomorrow (overnight window, evening side).
        let mut date = local.date();
        if local.time() >= self.end {
            date = date.tomorrow().ok()?;
        }
        let end = date.to_datetime(self.end).to_zoned(tz.clone()).ok()?;
        u64::try_from(end.timestamp().as_millisecond()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> QuietWindow {
        QuietWindow { start: parse_hhmm("21:00").unwrap(), end: parse_hhmm("08:00").unwrap() }
    }

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    fn at(ms: u64, tz: &str) -> String {
        Timestamp::from_millisecond(ms as i64).unwrap().to_zoned(TimeZone::get(tz).unwrap()).to_string()
    }

    #[test]
    fn inside_and_outside_the_overnight_window() {
        let tz = TimeZone::get("America/Chicago").unwrap();
        // 22:30 Chicago (CST, UTC-6) → next day 08:00.
        let r = window().release_time(ms("2026-11-23T04:30:00Z"), &tz).unwrap();
        assert_eq!(at(r, "America/Chicago"), "2026-11-23T08:00:00-06:00[America/Chicago]");
        // 06:00 Chicago → same day 08:00.
        let r = window().release_time(ms("2026-11-23T12:00:00Z"), &tz).unwrap();
        assert_eq!(at(r, "America/Chicago"), "2026-11-23T08:00:00-06:00[America/Chicago]");
        // 12:00 Chicago: not quiet.
        assert_eq!(window().release_time(ms("2026-11-23T18:00:00Z"), &tz), None);
        assert!(window().release_time(ms("2026-11-23T02:59:59Z"), &tz).is_none(), "20:59:59 is before the window");
        assert!(window().release_time(ms("2026-11-23T03:00:00Z"), &tz).is_some(), "21:00:00 is in it");
    }

    #[test]
    fn daylight_saving_transitions() {
        let tz = TimeZone::get("America/New_York").unwrap();
        // Night of the spring-forward (2026-03-08, 02:00 → 03:00): 23:00 EST → 08:00 EDT, 8 h later.
        let start = ms("2026-03-08T04:00:00Z");
        let r = window().release_time(start, &tz).unwrap();
        assert_eq!(at(r, "America/New_York"), "2026-03-08T08:00:00-04:00[America/New_York]");
        assert_eq!(r - start, 8 * 3600 * 1000);
        // Fall-back night (2026-11-01, 02:00 → 01:00): 23:00 EDT → 08:00 EST, 10 h later.
        let start = ms("2026-11-01T03:00:00Z");
        let r = window().release_time(start, &tz).unwrap();
        assert_eq!(at(r, "America/New_York"), "2026-11-01T08:00:00-05:00[America/New_York]");
        assert_eq!(r - start, 10 * 3600 * 1000);
        // A window that ends inside the skipped hour resolves to the first instant after it.
        let w = QuietWindow { start: parse_hhmm("01:00").unwrap(), end: parse_hhmm("02:30").unwrap() };
        let r = w.release_time(ms("2026-03-08T06:30:00Z"), &tz).unwrap(); // 01:30 EST
        assert_eq!(at(r, "America/New_York"), "2026-03-08T03:30:00-04:00[America/New_York]");
    }

    #[test]
    fn zones_from_numbers() {
        assert_eq!(zone_of_number("+447911123456"), Some("Europe/London"));
        assert_eq!(zone_of_number("+14155550123"), None, "the US has several zones");
        let tz = recipient_zone(None, "+14155550123", "America/Los_Angeles");
        assert_eq!(tz.iana_name(), Some("America/Los_Angeles"));
        let tz = recipient_zone(Some("Asia/Tokyo"), "+447911123456", "UTC");
        assert_eq!(tz.iana_name(), Some("Asia/Tokyo"));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("7:5"), Time::new(7, 5, 0, 0).ok());
    }
}
