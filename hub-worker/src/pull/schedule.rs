//! A pulled source's cron schedule, in its time zone.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// When a source runs: a cron expression (5 fields, or 6 with seconds first) read in a time
/// zone (UTC unless the file names one), so that `0 0 2 * * *` in `Europe/Paris` is 02:00 in
/// Paris in winter and in summer.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
    text: String,
}

impl Schedule {
    /// Parses `expr` in `zone` (an IANA name). The error says what is wrong.
    pub fn parse(expr: &str, zone: Option<&str>) -> Result<Schedule, String> {
        let cron =
            Cron::from_str(expr).map_err(|e| format!("schedule: `{expr}` is not a cron expression: {e}"))?;
        let zone = match zone {
            None => Tz::UTC,
            Some(z) => Tz::from_str(z).map_err(|_| {
                format!("timezone: `{z}` is not an IANA time zone (for example `Europe/Paris`)")
            })?,
        };
        let s = Schedule { cron, zone, text: expr.to_owned() };
        // An expression that never fires (`0 0 30 2 *`: February 30th) is a mistake.
        if s.next_after(Utc::now()).is_none() {
            return Err(format!("schedule: `{expr}` never fires"));
        }
        Ok(s)
    }

    /// The first time strictly after `t` the schedule fires.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron.find_next_occurrence(&local, false).ok().map(|n| n.with_timezone(&Utc))
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The time zone's name.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn seconds_and_time_zones() {
        let every_10s = Schedule::parse("*/10 * * * * *", None).expect("parse");
        assert_eq!(every_10s.next_after(at("2026-11-22T10:00:03Z")), Some(at("2026-11-22T10:00:10Z")));
        assert_eq!(every_10s.next_after(at("2026-11-22T10:00:10Z")), Some(at("2026-11-22T10:00:20Z")));
        // 02:00 in Paris is 01:00 UTC in winter and 00:00 UTC in summer.
        let paris = Schedule::parse("0 0 2 * * *", Some("Europe/Paris")).expect("parse");
        assert_eq!(paris.next_after(at("2026-11-22T12:00:00Z")), Some(at("2026-11-23T01:00:00Z")));
        assert_eq!(paris.next_after(at("2026-07-01T12:00:00Z")), Some(at("2026-07-02T00:00:00Z")));
        // Five fields: minutes.
        let hourly = Schedule::parse("15 * * * *", None).expect("parse");
        assert_eq!(hourly.next_after(at("2026-11-22T10:20:00Z")), Some(at("2026-11-22T11:15:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let e = Schedule::parse("*/10 * * *", None).expect_err("four fields");
        assert!(e.contains("`*/10 * * *` is not a cron expression"), "{e}");
        let e = Schedule::parse("0 61 * * * *", None).expect_err("minute 61");
        assert!(e.starts_with("schedule:"), "{e}");
        let e = Schedule::parse("* * * * *", Some("Mars/Olympus")).expect_err("zone");
        assert!(e.contains("`Mars/Olympus` is not an IANA time zone"), "{e}");
        let e = Schedule::parse("0 0 30 2 *", None).expect_err("never");
        assert!(e.contains("never fires"), "{e}");
    }
}
