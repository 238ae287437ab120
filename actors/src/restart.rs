//! The restart rule shared by every supervisor: exponential backoff, and a failure budget per
//! window beyond which the supervised unit is given up on (degraded).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Failures tolerated within `window` before giving up.
    pub max_restarts: usize,
    pub window: Duration,
    /// First restart delay; doubles with each failure in the window, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    RestartAfter(Duration),
    GiveUp,
}

/// Recent failures of one supervised unit.
#[derive(Debug, Default)]
pub struct FailureWindow {
    failures: VecDeque<Instant>,
}

impl FailureWindow {
    pub fn record(&mut self, policy: &RestartPolicy) -> Verdict {
        let now = Instant::now();
        self.failures.push_back(now);
        while self.failures.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            self.failures.pop_front();
        }
        if self.failures.len() > policy.max_restarts {
            return Verdict::GiveUp;
        }
        let exponent = (self.failures.len() - 1).min(16) as u32;
        Verdict::RestartAfter(policy.backoff_base.saturating_mul(2u32.saturating_pow(exponent)).min(policy.backoff_max))
    }

    pub fn recent(&self) -> usize {
        self.failures.len()
    }

    pub fn clear(&mut self) {
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up() {
        let policy = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
        };
        let mut w = FailureWindow::default();
        assert_eq!(w.record(&policy), Verdict::RestartAfter(Duration::from_millis(100)));
        assert_eq!(w.record(&policy), Verdict::RestartAfter(Duration::from_millis(200)));
        assert_eq!(w.record(&policy), Verdict::RestartAfter(Duration::from_millis(250)));
        assert_eq!(w.record(&policy), Verdict::GiveUp);
        assert_eq!(w.recent(), 4);
    }
}
