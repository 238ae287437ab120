//! Per-API-key rate limits: a token bucket per key on each node, sized by the key's tier.
//!
//! Buckets are per node and not shared: a key spread over N nodes may use up to N times its
//! tier's rate cluster-wide (docs/identity.md). A load balancer that pins a key to one node
//! makes the per-node rate the cluster-wide one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custos_config::{IdentityConfig, RateTier};
use custos_raft::ApiKeyId;

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct RateLimiter {
    tiers: BTreeMap<String, RateTier>,
    default_tier: String,
    max_buckets: usize,
    buckets: Mutex<HashMap<ApiKeyId, Bucket>>,
}

impl RateLimiter {
    pub fn new(config: &IdentityConfig) -> Self {
        RateLimiter {
            tiers: config.api_key_tiers.clone(),
            default_tier: config.default_api_key_tier.clone(),
            max_buckets: config.max_rate_buckets,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `tier` is configured here.
    pub fn has_tier(&self, tier: &str) -> bool {
        self.tiers.contains_key(tier)
    }

    pub fn default_tier(&self) -> &str {
        &self.default_tier
    }

    /// Takes one token from the key's bucket, or says how long until one is there. A tier this
    /// node does not know (configurations differ between nodes) counts as the default tier.
    pub fn admit(&self, key: &ApiKeyId, tier: &str) -> Result<(), Duration> {
        self.admit_at(key, tier, Instant::now())
    }

    fn admit_at(&self, key: &ApiKeyId, tier: &str, now: Instant) -> Result<(), Duration> {
        let tier = self.tiers.get(tier).or_else(|| self.tiers.get(&self.default_tier));
        // Validation guarantees the default tier exists; without tiers nothing is limited.
        let Some(RateTier { per_second, burst }) = tier else { return Ok(()) };
        let burst = f64::from(*burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_buckets {
            // A bucket refilled to the brim is the same as no bucket: drop those first, then,
            // if every key is busy, start over (briefly lenient rather than unbounded).
            let full = |b: &Bucket| b.tokens + now.duration_since(b.refilled).as_secs_f64() * per_second >= burst;
            buckets.retain(|_, b| !full(b));
            if buckets.len() >= self.max_buckets {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: burst, refilled: now });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max_buckets: usize) -> RateLimiter {
        RateLimiter::new(&IdentityConfig {
            api_key_tiers: [("t".to_string(), RateTier { per_second, burst })].into_iter().collect(),
            default_api_key_tier: "t".into(),
            max_rate_buckets: max_buckets,
            ..IdentityConfig::default()
        })
    }

    #[test]
    fn a_burst_then_the_rate_with_a_retry_time() {
        let limiter = limiter(10.0, 3, 10);
        let key = ApiKeyId::new("k").unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.admit_at(&key, "t", start).is_ok());
        }
        // Empty: the next token comes in 100 ms.
        let wait = limiter.admit_at(&key, "t", start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(limiter.admit_at(&key, "t", start + Duration::from_millis(100)).is_ok());
        assert!(limiter.admit_at(&key, "t", start + Duration::from_millis(100)).is_err());
        // Other keys have their own buckets; an unknown tier counts as the default.
        assert!(limiter.admit_at(&ApiKeyId::new("other").unwrap(), "gone", start).is_ok());
    }

    #[test]
    fn buckets_stay_bounded() {
        let limiter = limiter(1.0, 1, 2);
        let now = Instant::now();
        for i in 0..100 {
            let _ = limiter.admit_at(&ApiKeyId::new(format!("k{i}")).unwrap(), "t", now);
            assert!(limiter.buckets.lock().unwrap().len() <= 2);
        }
    }
}
