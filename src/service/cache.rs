//! The prompt cache, in sled: generated speeches by model version, normalised topic and
//! sampling settings. Each key keeps up to `variants` speeches; until it has them every
//! request generates a new one, after that requests are answered from the cache in turn, so
//! two people asking the same thing read different speeches. Entries expire after a TTL,
//! the least recently used go first past the size cap, and entries of another model
//! version are never served and are purged in the background.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::now_ms;
use mananera_engine::SamplingParams;

/// `[cache]`: the prompt cache's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Serve and store speeches from the cache at all.
    pub enabled: bool,
    /// Speeches kept per key (1 with a fixed seed or greedy decoding, which always repeat).
    pub variants: usize,
    /// Hours an entry is served after it was first written.
    pub ttl_hours: u64,
    /// Size cap of the stored text; past it the least recently used entries are evicted.
    pub max_mb: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            variants: 3,
            ttl_hours: 24 * 7,
            max_mb: 256,
        }
    }
}

impl CacheConfig {
    /// Refuses settings the cache cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.variants == 0 {
            return Err(
                "cache.variants = 0: keep at least 1 speech per key, or set cache.enabled = false"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What is in the cache, for `/metrics` and `mananera cache stats`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: u64,
    pub variants: usize,
}

/// One key's speeches.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    created_ms: u64,
    used_ms: u64,
    /// Which variant the next hit gets.
    next: u32,
    variants: Vec<String>,
}

impl Entry {
    fn bytes(&self, key: &[u8]) -> u64 {
        (key.len() + self.variants.iter().map(String::len).sum::<usize>()) as u64
    }
}

/// The cache of one model version.
pub struct PromptCache {
    db: sled::Db,
    /// key → [`Entry`] as JSON.
    entries: sled::Tree,
    /// last use (ms, big-endian) ++ key → nothing: the eviction order.
    recency: sled::Tree,
    version: String,
    config: CacheConfig,
    bytes: AtomicU64,
    /// Keys stored, kept as a count so that reporting it scans nothing.
    entries_count: AtomicU64,
}

impl PromptCache {
    /// The cache of model `version` in the daemon's sled store.
    pub fn new(db: sled::Db, config: CacheConfig, version: &str) -> Result<Self, sled::Error> {
        let cache = Self {
            entries: db.open_tree("entries")?,
            recency: db.open_tree("recency")?,
            db,
            version: version.to_string(),
            config,
            bytes: AtomicU64::new(0),
            entries_count: AtomicU64::new(0),
        };
        let (mut bytes, mut count) = (0, 0);
        for (k, v) in cache.entries.iter().filter_map(Result::ok) {
            bytes += serde_json::from_slice::<Entry>(&v).map_or(0, |e| e.bytes(&k));
            count += 1;
        }
        cache.bytes.store(bytes, Ordering::SeqCst);
        cache.entries_count.store(count, Ordering::SeqCst);
        Ok(cache)
    }

    /// The key of a request: this cache's model version, the voice, the topic (as
    /// [`super::topic::clean`] leaves it, lower-cased) and every sampling setting that
    /// changes the text.
    pub fn key(&self, voice: &str, topic: &str, params: &SamplingParams) -> Vec<u8> {
        let topic = topic.to_lowercase();
        let params = serde_json::to_string(params).unwrap_or_default();
        format!("{}\u{1f}{voice}\u{1f}{topic}\u{1f}{params}", self.version).into_bytes()
    }

    /// How many speeches a key keeps: one when the settings always give the same text.
    fn capacity(&self, params: &SamplingParams) -> usize {
        if params.seed.is_some() || params.temperature == 0.0 {
            1
        } else {
            self.config.variants.max(1)
        }
    }

    /// A stored speech for `key` once it has all its variants, each hit taking the next one.
    pub fn lookup(&self, key: &[u8], params: &SamplingParams) -> Option<String> {
        if !self.config.enabled {
            return None;
        }
        let mut entry = self.read(key)?;
        let now = now_ms();
        if now.saturating_sub(entry.created_ms) > self.config.ttl_hours * 3_600_000 {
            self.remove(key);
            return None;
        }
        if entry.variants.len() < self.capacity(params) {
            return None;
        }
        let text = entry.variants[entry.next as usize % entry.variants.len()].clone();
        entry.next = entry.next.wrapping_add(1);
        let previous_use = entry.used_ms;
        entry.used_ms = now;
        self.write(key, &entry, Some(previous_use));
        Some(text)
    }

    /// Adds a generated speech to `key` (ignored once the key has all its variants).
    pub fn store(&self, key: &[u8], params: &SamplingParams, text: &str) {
        if !self.config.enabled || text.is_empty() {
            return;
        }
        let now = now_ms();
        let (mut entry, previous_use) = match self.read(key) {
            Some(e) => {
                let used = e.used_ms;
                (e, Some(used))
            }
            None => (
                Entry {
                    created_ms: now,
                    used_ms: now,
                    next: 0,
                    variants: Vec::new(),
                },
                None,
            ),
        };
        if entry.variants.len() >= self.capacity(params) {
            return;
        }
        let before = if previous_use.is_some() {
            entry.bytes(key)
        } else {
            0
        };
        entry.variants.push(text.to_string());
        entry.used_ms = now;
        let after = entry.bytes(key);
        self.write(key, &entry, previous_use);
        self.bytes.fetch_add(after - before, Ordering::SeqCst);
        self.evict();
    }

    /// Removes expired entries and those of other model versions; returns how many.
    pub fn purge_stale(&self) -> usize {
        let prefix = format!("{}\u{1f}", self.version);
        let ttl_ms = self.config.ttl_hours * 3_600_000;
        let now = now_ms();
        let stale: Vec<sled::IVec> = self
            .entries
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                !k.starts_with(prefix.as_bytes())
                    || serde_json::from_slice::<Entry>(v)
                        .map_or(true, |e| now.saturating_sub(e.created_ms) > ttl_ms)
            })
            .map(|(k, _)| k)
            .collect();
        for key in &stale {
            self.remove(key);
        }
        if !stale.is_empty() {
            tracing::info!(removed = stale.len(), version = %self.version, "purged stale cache entries");
        }
        stale.len()
    }

    /// Removes everything.
    pub fn clear(&self) -> Result<(), sled::Error> {
        self.entries.clear()?;
        self.recency.clear()?;
        self.bytes.store(0, Ordering::SeqCst);
        self.entries_count.store(0, Ordering::SeqCst);
        self.flush()
    }

    /// Entries and bytes now, from counters (no scan).
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries_count.load(Ordering::SeqCst) as usize,
            bytes: self.bytes.load(Ordering::SeqCst),
            variants: self.config.variants,
        }
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }

    fn read(&self, key: &[u8]) -> Option<Entry> {
        crate::failpoint::hit("store.cache");
        match self.entries.get(key) {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(error = %e, "an unreadable cache entry was dropped");
                    self.remove(key);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the prompt cache could not be read; answering without it");
                None
            }
        }
    }

    fn write(&self, key: &[u8], entry: &Entry, previous_use: Option<u64>) {
        let Ok(json) = serde_json::to_vec(entry) else {
            return;
        };
        crate::failpoint::hit("store.cache");
        let result = self.entries.insert(key, json).and_then(|old| {
            if old.is_none() {
                self.entries_count.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(used) = previous_use {
                self.recency.remove(recency_key(used, key))?;
            }
            self.recency.insert(recency_key(entry.used_ms, key), &[])
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "the prompt cache could not be written; answering without it");
        }
    }

    fn remove(&self, key: &[u8]) {
        let Ok(Some(old)) = self.entries.remove(key) else {
            return;
        };
        self.entries_count.fetch_sub(1, Ordering::SeqCst);
        if let Ok(entry) = serde_json::from_slice::<Entry>(&old) {
            self.bytes.fetch_sub(
                entry.bytes(key).min(self.bytes.load(Ordering::SeqCst)),
                Ordering::SeqCst,
            );
            let _ = self.recency.remove(recency_key(entry.used_ms, key));
        }
    }

    /// Drops least recently used entries until the text fits the size cap.
    fn evict(&self) {
        let cap = self.config.max_mb * 1024 * 1024;
        while self.bytes.load(Ordering::SeqCst) > cap {
            let Ok(Some((oldest, _))) = self.recency.pop_min() else {
                break;
            };
            let key = &oldest[8..];
            self.remove(key);
        }
    }
}

fn recency_key(used_ms: u64, key: &[u8]) -> Vec<u8> {
    [used_ms.to_be_bytes().as_slice(), key].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(config: CacheConfig, version: &str) -> (sled::Db, PromptCache) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = PromptCache::new(db.clone(), config, version).unwrap();
        (db, cache)
    }

    #[test]
    fn voices_are_kept_apart() {
        let config = CacheConfig {
            variants: 1,
            ..Default::default()
        };
        let (_db, c) = cache(config, "v1");
        let params = SamplingParams::default();
        let amlo = c.key("amlo", "el agua", &params);
        let sheinbaum = c.key("sheinbaum", "el agua", &params);
        assert_ne!(amlo, sheinbaum);
        c.store(&amlo, &params, "un discurso de AMLO");
        assert_eq!(c.lookup(&sheinbaum, &params), None);
        assert_eq!(
            c.lookup(&amlo, &params).as_deref(),
            Some("un discurso de AMLO")
        );
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let config = CacheConfig {
            ttl_hours: 0,
            variants: 1,
            ..Default::default()
        };
        let (_db, c) = cache(config, "v1");
        let params = SamplingParams::default();
        let key = c.key("amlo", "tema", &params);
        c.store(&key, &params, "un discurso");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.lookup(&key, &params), None);
        assert_eq!(c.stats().entries, 0, "an expired entry is removed when met");
        assert_eq!(c.stats().bytes, 0);
    }

    #[test]
    fn past_the_size_cap_the_least_recently_used_go_first() {
        let config = CacheConfig {
            variants: 1,
            max_mb: 1,
            ..Default::default()
        };
        let (_db, c) = cache(config, "v1");
        let params = SamplingParams::default();
        let text = "x".repeat(400 * 1024);
        let keys: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .map(|t| c.key("amlo", t, &params))
            .collect();
        c.store(&keys[0], &params, &text);
        c.store(&keys[1], &params, &text);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Reading `a` makes `b` the least recently used.
        assert!(c.lookup(&keys[0], &params).is_some());
        std::thread::sleep(std::time::Duration::from_millis(2));
        c.store(&keys[2], &params, &text);
        assert!(c.lookup(&keys[1], &params).is_none(), "b was evicted");
        assert!(c.lookup(&keys[0], &params).is_some());
        assert!(c.lookup(&keys[2], &params).is_some());
        assert!(c.stats().bytes <= 1024 * 1024);
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn another_version_never_sees_the_entries_and_purges_them() {
        let config = CacheConfig {
            variants: 1,
            ..Default::default()
        };
        let (db, old) = cache(config.clone(), "v1");
        let params = SamplingParams::default();
        old.store(&old.key("amlo", "tema", &params), &params, "viejo");
        let new = PromptCache::new(db, config, "v2").unwrap();
        let key = new.key("amlo", "tema", &params);
        assert_eq!(new.lookup(&key, &params), None);
        assert_eq!(new.purge_stale(), 1);
        assert_eq!(new.stats().entries, 0);
        assert_eq!(new.stats().bytes, 0);
    }
}
