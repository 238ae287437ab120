//! A circuit breaker: after `failures` consecutive failures, calls fail at once for
//! `cooldown`, so an unreachable Vault costs requests nothing but a clear error.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker { threshold, cooldown, consecutive: 0, open_until: None }
    }

    /// Whether a call may go out now. After the cooldown, calls go out again; the next
    /// failure reopens the breaker at once.
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    pub fn is_open(&self, now: Instant) -> bool {
        !self.allows(now)
    }

    pub fn success(&mut self) {
        self.consecutive = 0;
        self.open_until = None;
    }

    pub fn failure(&mut self, now: Instant) {
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let mut b = Breaker::new(3, Duration::from_secs(10));
        let now = Instant::now();
        b.failure(now);
        b.failure(now);
        assert!(b.allows(now));
        b.failure(now);
        assert!(b.is_open(now));
        assert!(b.allows(now + Duration::from_secs(11)), "the cooldown lets a probe through");
        b.failure(now + Duration::from_secs(11));
        assert!(b.is_open(now + Duration::from_secs(12)), "a failed probe reopens it");
        b.success();
        assert!(b.allows(now));
    }
}
