//! Per-user limits: allow and block lists, one request in flight, a rate per minute and a
//! daily quota; admins are exempt. The counts are decided in memory (no disk on the request's
//! path) and written behind to sled through the [`Store`] thread, so a restart does not reset
//! them and a stalled disk does not stall a request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::store::Store;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

/// `[limits]`: who may ask, and how often. User ids are `<front end>:<id>`, e.g.
/// `web:203.0.113.7`, `discord:80351110224678912`, `telegram:12345`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per user per minute; 0 turns the limit off.
    pub per_minute: u32,
    /// Requests per user per day (in `time_zone`); 0 turns the quota off.
    pub per_day: u32,
    /// IANA time zone whose midnight starts a new day of the quota.
    pub time_zone: String,
    /// When not empty, only these users may ask.
    pub allow: Vec<String>,
    /// These users may never ask.
    pub block: Vec<String>,
    /// Exempt from every limit.
    pub admins: Vec<String>,
    /// `[limits.discord]`: rates for Discord users, where they differ.
    pub discord: PlatformRates,
    /// `[limits.telegram]`: rates for Telegram users, where they differ.
    pub telegram: PlatformRates,
}

/// One platform's own rate and quota; an unset value falls back to `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformRates {
    pub per_minute: Option<u32>,
    pub per_day: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_minute: 5,
            per_day: 100,
            time_zone: "America/Mexico_City".into(),
            allow: Vec::new(),
            block: Vec::new(),
            admins: Vec::new(),
            discord: PlatformRates::default(),
            telegram: PlatformRates::default(),
        }
    }
}

impl LimitsConfig {
    /// Refuses a time zone that is not in the time zone database.
    pub fn validate(&self) -> Result<(), String> {
        self.zone().map(drop)
    }

    fn zone(&self) -> Result<TimeZone, String> {
        TimeZone::get(&self.time_zone).map_err(|e| {
            format!(
                "limits.time_zone = {:?}: {e}; use an IANA name such as \"America/Mexico_City\"",
                self.time_zone
            )
        })
    }
}

/// Why a request was not let through, with what the person can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// On the block list, or missing from a non-empty allow list.
    NotAllowed,
    /// Another request of this user is still being written.
    InFlight,
    /// Over the per-minute rate; retry in this many seconds.
    RateLimited { retry_after_s: u64 },
    /// Over the daily quota; it resets in this many seconds, at midnight in `time_zone`.
    QuotaExhausted { resets_in_s: u64, time_zone: String },
}

/// One user's counts, stored as JSON under the user id.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Usage {
    /// Times (ms) of the requests of the last minute.
    recent_ms: Vec<u64>,
    /// Day number (days since 1970-01-01 in the quota's time zone) of `today`.
    day: u64,
    today: u32,
}

/// The limits in force.
pub struct Limits {
    config: LimitsConfig,
    zone: TimeZone,
    tree: sled::Tree,
    store: Store,
    /// Every user's counts (read from `tree` at start; users idle since yesterday dropped).
    usage: Mutex<Counts>,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

/// Held while a user's request runs; dropping it lets the user ask again.
#[derive(Debug)]
pub struct Slot {
    user: String,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.user);
    }
}

impl Limits {
    /// Limits whose counts persist in `tree`, written through `store`. Reads the whole tree:
    /// call it off the async runtime. An unknown time zone (refused by the settings' check)
    /// counts days in UTC.
    pub fn new(config: LimitsConfig, tree: sled::Tree, store: Store) -> Self {
        let zone = config.zone().unwrap_or(TimeZone::UTC);
        let today = day_of(&zone, super::now_ms()).0;
        let usage = tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(user, value)| {
                let user = String::from_utf8(user.to_vec()).ok()?;
                let usage: Usage = serde_json::from_slice(&value).ok()?;
                (usage.day >= today).then_some((user, usage))
            })
            .collect();
        Self {
            config,
            zone,
            tree,
            store,
            usage: Mutex::new(Counts {
                users: usage,
                pruned_day: today,
            }),
            in_flight: Arc::default(),
        }
    }

    /// True for admins.
    pub fn is_admin(&self, user: &str) -> bool {
        self.config.admins.iter().any(|a| a == user)
    }

    /// Lets a request of `user` through at `now_ms` and counts it, or says why not.
    pub fn admit(&self, user: &str, now_ms: u64) -> Result<Slot, Refusal> {
        let admin = self.is_admin(user);
        if !admin
            && (self.config.block.iter().any(|b| b == user)
                || (!self.config.allow.is_empty() && !self.config.allow.iter().any(|a| a == user)))
        {
            return Err(Refusal::NotAllowed);
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !admin && in_flight.contains(user) {
            return Err(Refusal::InFlight);
        }
        if !admin {
            self.count(user, now_ms)?;
        }
        // Admins may run several at once; only the first holds the slot.
        in_flight.insert(user.to_string());
        Ok(Slot {
            user: user.to_string(),
            in_flight: Arc::clone(&self.in_flight),
        })
    }

    /// The rate per minute and the daily quota for `user`, by the platform its id names.
    fn rates(&self, user: &str) -> (u32, u32) {
        let platform = match user.split_once(':').map(|(p, _)| p) {
            Some("discord") => &self.config.discord,
            Some("telegram") => &self.config.telegram,
            _ => &PlatformRates::default(),
        };
        (
            platform.per_minute.unwrap_or(self.config.per_minute),
            platform.per_day.unwrap_or(self.config.per_day),
        )
    }

    /// Checks and records one request against the rate and the quota; the new counts are
    /// written behind.
    fn count(&self, user: &str, now_ms: u64) -> Result<(), Refusal> {
        let (per_minute, per_day) = self.rates(user);
        let mut counts = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let (day, next_midnight_ms) = day_of(&self.zone, now_ms);
        if counts.users.len() > PRUNE_ABOVE && counts.pruned_day != day {
            counts.users.retain(|_, u| u.day >= day);
            counts.pruned_day = day;
        }
        let usage = counts.users.entry(user.to_string()).or_default();
        usage
            .recent_ms
            .retain(|&t| now_ms.saturating_sub(t) < 60_000);
        if usage.day != day {
            usage.day = day;
            usage.today = 0;
        }
        if per_day > 0 && usage.today >= per_day {
            return Err(Refusal::QuotaExhausted {
                resets_in_s: next_midnight_ms.saturating_sub(now_ms).div_ceil(1000),
                time_zone: self.config.time_zone.clone(),
            });
        }
        if per_minute > 0 && usage.recent_ms.len() >= per_minute as usize {
            let oldest = usage.recent_ms.iter().min().copied().unwrap_or(now_ms);
            return Err(Refusal::RateLimited {
                retry_after_s: (oldest + 60_000)
                    .saturating_sub(now_ms)
                    .div_ceil(1000)
                    .max(1),
            });
        }
        usage.recent_ms.push(now_ms);
        usage.today += 1;
        if let Ok(json) = serde_json::to_vec(usage) {
            let (tree, user) = (self.tree.clone(), user.to_string());
            self.store.send("limits_write", move || {
                crate::failpoint::hit("store.limits");
                if let Err(e) = tree.insert(user, json) {
                    tracing::warn!(error = %e, "user limits could not be saved");
                }
            });
        }
        Ok(())
    }
}

/// The day `now_ms` falls on in `zone` (days since 1970-01-01 there) and when the next one
/// starts (ms since the epoch).
fn day_of(zone: &TimeZone, now_ms: u64) -> (u64, u64) {
    const DAY_MS: u64 = 86_400_000;
    let utc = (now_ms / DAY_MS, (now_ms / DAY_MS + 1) * DAY_MS);
    let Ok(now) = jiff::Timestamp::from_millisecond(now_ms as i64) else {
        return utc;
    };
    let date = now.to_zoned(zone.clone()).date();
    let day = date
        .since(jiff::civil::date(1970, 1, 1))
        .map_or(utc.0 as i64, |span| i64::from(span.get_days()));
    let next = date
        .tomorrow()
        .and_then(|d| d.to_zoned(zone.clone()))
        .map_or(utc.1 as i64, |z| z.timestamp().as_millisecond());
    (day.max(0) as u64, next.max(0) as u64)
}

/// Past this many users in memory, those idle since before today are dropped (once a day).
const PRUNE_ABOVE: usize = 10_000;

/// The users' counts in memory, and the day they were last pruned.
struct Counts {
    users: HashMap<String, Usage>,
    pruned_day: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn limits(per_minute: u32, per_day: u32) -> Limits {
        let config = LimitsConfig {
            per_minute,
            per_day,
            time_zone: "UTC".into(),
            admins: vec!["web:admin".into()],
            block: vec!["web:troll".into()],
            ..Default::default()
        };
        let db = sled::Config::new().temporary(true).open().unwrap();
        Limits::new(config, db.open_tree("limits").unwrap(), store())
    }

    fn store() -> Store {
        Store::start(Arc::default()).unwrap()
    }

    #[test]
    fn counts_survive_a_restart() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let config = LimitsConfig {
            per_minute: 0,
            per_day: 2,
            ..Default::default()
        };
        let now = crate::service::now_ms();
        let first = Limits::new(config.clone(), db.open_tree("limits").unwrap(), store());
        drop(first.admit("web:a", now).unwrap());
        drop(first.admit("web:a", now + 1).unwrap());
        // The write is behind: wait until it is on the tree.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db
            .open_tree("limits")
            .unwrap()
            .get("web:a")
            .unwrap()
            .is_none_or(|v| serde_json::from_slice::<Usage>(&v).map_or(true, |u| u.today < 2))
        {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let second = Limits::new(config, db.open_tree("limits").unwrap(), store());
        assert!(matches!(
            second.admit("web:a", now + 2),
            Err(Refusal::QuotaExhausted { .. })
        ));
    }

    #[test]
    fn a_platform_may_have_its_own_rate() {
        let config = LimitsConfig {
            per_minute: 5,
            telegram: PlatformRates {
                per_minute: Some(1),
                per_day: None,
            },
            ..Default::default()
        };
        let db = sled::Config::new().temporary(true).open().unwrap();
        let limits = Limits::new(config, db.open_tree("limits").unwrap(), store());
        drop(limits.admit("telegram:1", 0).unwrap());
        assert!(matches!(
            limits.admit("telegram:1", 1),
            Err(Refusal::RateLimited { .. })
        ));
        for t in 0..5 {
            drop(limits.admit("discord:1", t).unwrap());
        }
        assert!(limits.admit("discord:1", 6).is_err());
    }

    #[test]
    fn one_request_in_flight_per_user_and_admins_are_exempt() {
        let l = limits(0, 0);
        let slot = l.admit("web:a", 0).unwrap();
        assert_eq!(l.admit("web:a", 1).unwrap_err(), Refusal::InFlight);
        l.admit("web:b", 1).expect("another user is served");
        drop(slot);
        l.admit("web:a", 2)
            .expect("free again once the first finished");
        let _one = l.admit("web:admin", 0).unwrap();
        l.admit("web:admin", 0).expect("admins may run several");
        assert_eq!(l.admit("web:troll", 0).unwrap_err(), Refusal::NotAllowed);
    }

    #[test]
    fn rate_and_quota_say_when_to_come_back() {
        let l = limits(2, 3);
        l.admit("u", 1_000).unwrap();
        l.admit("u", 2_000).unwrap();
        assert_eq!(
            l.admit("u", 3_000).unwrap_err(),
            Refusal::RateLimited { retry_after_s: 58 }
        );
        l.admit("u", 61_500).unwrap();
        let refusal = l.admit("u", 200_000).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::QuotaExhausted {
                resets_in_s: (DAY_MS - 200_000) / 1000,
                time_zone: "UTC".into(),
            }
        );
        l.admit("u", DAY_MS + 5)
            .expect("a new day resets the quota");
    }

    #[test]
    fn the_quota_day_starts_at_midnight_in_its_time_zone() {
        let config = LimitsConfig {
            per_minute: 0,
            per_day: 1,
            ..Default::default()
        };
        let db = sled::Config::new().temporary(true).open().unwrap();
        let l = Limits::new(config, db.open_tree("limits").unwrap(), store());
        // 2026-12-01 05:30 UTC is 23:30 of 2026-11-30 in Mexico City (UTC-6).
        let at = jiff::civil::date(2026, 12, 1)
            .at(5, 30, 0, 0)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond() as u64;
        drop(l.admit("u", at).unwrap());
        assert_eq!(
            l.admit("u", at + 1000).unwrap_err(),
            Refusal::QuotaExhausted {
                resets_in_s: 30 * 60 - 1,
                time_zone: "America/Mexico_City".into(),
            }
        );
        // 06:00 UTC is midnight there: a new day, while UTC's started hours ago.
        l.admit("u", at + 30 * 60 * 1000)
            .expect("midnight in Mexico City renews the quota");
        assert!(
            LimitsConfig {
                time_zone: "Mars/Olympus".into(),
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .contains("limits.time_zone")
        );
    }
}
