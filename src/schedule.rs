//! When the nightly run happens: `[nightly]`'s settings, and the schedule they describe (a
//! daily local time or a cron expression, in a time zone).

use std::str::FromStr;

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

/// `[nightly]`: the daily re-scrape and incremental fine-tune inside `mananera serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NightlyConfig {
    /// Run on the schedule (a run can still be started by an admin when false).
    pub enabled: bool,
    /// Local time of the daily run, `HH:MM`.
    pub at: String,
    /// IANA time zone of `at` and `cron`.
    pub time_zone: String,
    /// A cron expression that replaces `at` when set: 5 fields (minute hour day month
    /// weekday), or 6 with seconds first.
    pub cron: String,
    /// Run at start-up when the daemon was down at a scheduled time.
    pub catch_up: bool,
    /// A daemon that has never run the nightly run: `now` runs it at start-up (a fresh
    /// deployment fetches the history and fine-tunes on its first night), `scheduled` waits
    /// for the schedule.
    pub first_run: FirstRun,
    /// CPU priority of the scrape and training processes (0 normal … 19 lowest).
    pub nice: i32,
    /// Matrix threads of the training process; 0 uses `engine.threads`.
    pub threads: usize,
    /// Address-space cap (RLIMIT_AS) of the training process in MiB (0: none); past it,
    /// the training fails, never the daemon.
    pub memory_max_mib: u64,
    /// After a cancel, how long the training process gets to save its checkpoint before it
    /// is killed.
    pub stop_grace_s: u64,
    /// The scrape is stopped (and the run fails) past this many minutes; 0: no limit.
    pub scrape_max_minutes: u64,
    /// The training is stopped at a checkpoint past this many minutes (the next run resumes
    /// it); 0: no limit.
    pub train_max_minutes: u64,
    /// Training time budget of a run, in minutes (`train --max-minutes`); 0: none. Past it
    /// the run validates what it trained and is accepted or rejected like any run; the
    /// transcripts it did not reach (oldest first) are left for the next nights.
    pub train_budget_minutes: f64,
    /// Run records kept in the state store.
    pub keep_runs: usize,
}

impl Default for NightlyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            at: "23:00".into(),
            time_zone: "America/Mexico_City".into(),
            cron: String::new(),
            catch_up: true,
            first_run: FirstRun::Now,
            nice: 19,
            threads: 0,
            memory_max_mib: 0,
            stop_grace_s: 120,
            scrape_max_minutes: 120,
            train_max_minutes: 720,
            train_budget_minutes: 300.0,
            keep_runs: 100,
        }
    }
}

impl NightlyConfig {
    /// Checks every setting, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        Schedule::new(self)?;
        if !(0..=19).contains(&self.nice) {
            return Err(format!(
                "nightly.nice = {}: use 0 (normal priority) to 19 (lowest)",
                self.nice
            ));
        }
        if !(self.train_budget_minutes.is_finite() && self.train_budget_minutes >= 0.0) {
            return Err(format!(
                "nightly.train_budget_minutes = {}: give the training's time budget in minutes \
                 (300 for five hours), or 0 for none",
                self.train_budget_minutes
            ));
        }
        if self.train_max_minutes > 0
            && self.train_budget_minutes > 0.0
            && self.train_budget_minutes >= self.train_max_minutes as f64
        {
            return Err(format!(
                "nightly.train_budget_minutes = {} is not below nightly.train_max_minutes = {}: \
                 the time limit would stop the training before its budget ends it; lower the \
                 budget or raise the limit (validation and saving need time after the budget)",
                self.train_budget_minutes, self.train_max_minutes
            ));
        }
        if self.keep_runs == 0 {
            return Err("nightly.keep_runs = 0: keep at least 1 run record".into());
        }
        Ok(())
    }
}

/// `nightly.first_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstRun {
    Now,
    Scheduled,
}

/// The times the nightly run is due.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
    described: String,
}

impl Schedule {
    /// The schedule `[nightly]` describes.
    pub fn new(config: &NightlyConfig) -> Result<Self, String> {
        let zone = TimeZone::get(&config.time_zone).map_err(|e| {
            format!(
                "nightly.time_zone = \"{}\": not a known time zone ({e}); use an IANA name such as \"America/Mexico_City\"",
                config.time_zone
            )
        })?;
        let (pattern, described) = if config.cron.trim().is_empty() {
            let (hour, minute) = parse_at(&config.at)?;
            (
                format!("{minute} {hour} * * *"),
                format!("daily at {hour:02}:{minute:02} {}", config.time_zone),
            )
        } else {
            (
                config.cron.trim().to_string(),
                format!("cron \"{}\" in {}", config.cron.trim(), config.time_zone),
            )
        };
        let cron = Cron::from_str(&pattern).map_err(|e| {
            format!(
                "nightly.cron = \"{pattern}\": {e}; use 5 fields (minute hour day month weekday) \
                 such as \"0 23 * * *\", or 6 with seconds first"
            )
        })?;
        let schedule = Self {
            cron,
            zone,
            described,
        };
        if schedule.next_after(Timestamp::now()).is_none() {
            return Err(format!(
                "nightly.cron = \"{pattern}\": it never matches a real time"
            ));
        }
        Ok(schedule)
    }

    /// The first due time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The latest due time at or before `at` (for catching up on a missed run).
    pub fn latest_until(&self, at: Timestamp) -> Option<Timestamp> {
        let zoned = at.to_zoned(self.zone.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// For people: "daily at 23:00 America/Mexico_City".
    pub fn describe(&self) -> &str {
        &self.described
    }
}

/// `HH:MM` as (hour, minute).
fn parse_at(at: &str) -> Result<(u8, u8), String> {
    let bad = || {
        format!("nightly.at = \"{at}\": not a time of day; use HH:MM (24-hour), such as \"23:00\"")
    };
    let (h, m) = at.trim().split_once(':').ok_or_else(bad)?;
    let hour: u8 = h.parse().map_err(|_| bad())?;
    let minute: u8 = m.parse().map_err(|_| bad())?;
    if hour > 23 || minute > 59 || m.len() != 2 {
        return Err(bad());
    }
    Ok((hour, minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(at: &str, zone: &str, cron: &str) -> Result<Schedule, String> {
        Schedule::new(&NightlyConfig {
            at: at.into(),
            time_zone: zone.into(),
            cron: cron.into(),
            ..NightlyConfig::default()
        })
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_daily_time_is_local_to_the_zone_across_daylight_saving() {
        let s = schedule("23:00", "America/Mexico_City", "").unwrap();
        // Mexico City has been UTC-6 all year since 2022.
        assert_eq!(
            s.next_after(ts("2026-11-27T12:00:00Z")),
            Some(ts("2026-11-28T05:00:00Z"))
        );
        // New York moves: 23:00 is 03:00Z in summer and 04:00Z in winter.
        let ny = schedule("23:00", "America/New_York", "").unwrap();
        assert_eq!(
            ny.next_after(ts("2026-07-01T12:00:00Z")),
            Some(ts("2026-07-02T03:00:00Z"))
        );
        assert_eq!(
            ny.next_after(ts("2026-12-01T12:00:00Z")),
            Some(ts("2026-12-02T04:00:00Z"))
        );
        assert_eq!(s.describe(), "daily at 23:00 America/Mexico_City");
    }

    #[test]
    fn the_next_time_is_strictly_later_and_the_latest_may_be_now() {
        let s = schedule("23:00", "UTC", "").unwrap();
        let due = ts("2026-11-27T23:00:00Z");
        assert_eq!(s.next_after(due), Some(ts("2026-11-28T23:00:00Z")));
        assert_eq!(s.latest_until(due), Some(due));
        assert_eq!(
            s.latest_until(ts("2026-11-27T22:59:59Z")),
            Some(ts("2026-11-26T23:00:00Z"))
        );
    }

    #[test]
    fn cron_replaces_the_daily_time_and_may_count_seconds() {
        let s = schedule("23:00", "UTC", "*/5 * * * * *").unwrap();
        assert_eq!(
            s.next_after(ts("2026-11-27T10:00:01Z")),
            Some(ts("2026-11-27T10:00:05Z"))
        );
        let weekdays = schedule("", "UTC", "30 14 * * 1-5").unwrap();
        // 2026-11-28 is a Saturday: the next weekday is Monday the 30th.
        assert_eq!(
            weekdays.next_after(ts("2026-11-27T15:00:00Z")),
            Some(ts("2026-11-30T14:30:00Z"))
        );
    }

    #[test]
    fn bad_settings_are_named_with_the_fix() {
        for (at, zone, cron, setting) in [
            ("25:00", "UTC", "", "nightly.at"),
            ("7", "UTC", "", "nightly.at"),
            ("07:5", "UTC", "", "nightly.at"),
            ("07:00", "Mars/Olympus", "", "nightly.time_zone"),
            ("07:00", "UTC", "61 * * * *", "nightly.cron"),
            ("07:00", "UTC", "every day", "nightly.cron"),
        ] {
            let err = schedule(at, zone, cron).unwrap_err();
            assert!(err.starts_with(setting), "{at} {zone} {cron}: {err}");
        }
        let err = NightlyConfig {
            nice: 20,
            ..NightlyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("nightly.nice"), "{err}");
    }
}
