//! A closed-loop load generator: `clients` tasks, each sending its next request as soon as the
//! previous one answered, for a fixed duration.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct RunStats {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies of successful requests, sorted, in microseconds.
    latencies_us: Vec<u64>,
}

impl RunStats {
    pub fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latency, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[rank] as f64 / 1000.0
    }
}

/// Runs `clients` concurrent loops for `duration`. `request(client, seq)` performs one request
/// and says whether it succeeded. Each client records at most `max_samples` latencies.
pub async fn drive<F, Fut>(clients: usize, duration: Duration, request: F) -> RunStats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    const MAX_SAMPLES_PER_CLIENT: usize = 1_000_000;
    let request = Arc::new(request);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ok = 0u64;
            let mut errors = 0u64;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if request(client, seq).await {
                    ok += 1;
                    if latencies.len() < MAX_SAMPLES_PER_CLIENT {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                } else {
                    errors += 1;
                }
                seq += 1;
            }
            (latencies, ok, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let (mut ok, mut errors) = (0, 0);
    for task in tasks {
        // A panicking request closure is a bug in the benchmark itself; count its loop as lost.
        if let Ok((mut l, o, e)) = task.await {
            latencies_us.append(&mut l);
            ok += o;
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    RunStats { ok, errors, elapsed, latencies_us }
}

/// CPU time (user and system) the processes `pids` have used so far, in seconds, from
/// `/proc/<pid>/stat`; a process that is gone counts as zero.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks_per_sec = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    };
    let ticks = |pid: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which ends with the last ')': state is field 3, utime
        // and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    pids.iter().filter_map(|pid| ticks(*pid)).sum::<u64>() as f64 / ticks_per_sec
}

/// Resident memory of the processes `pids` together, in bytes, from `/proc/<pid>/statm`; a
/// process that is gone counts as zero.
pub fn resident_bytes(pids: &[u32]) -> u64 {
    let page = match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(bytes)) if bytes > 0 => bytes as u64,
        _ => 4096,
    };
    let pages = |pid: u32| -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        statm.split_whitespace().nth(1)?.parse().ok()
    };
    pids.iter().filter_map(|pid| pages(*pid)).sum::<u64>() * page
}

/// Waits until the processes are nearly idle (under a fifth of a core over a quarter of a
/// second) or `max_wait` has passed, so that work left from the previous run (actors still
/// starting after creates, a backlog still being applied) stays out of the next run's figures.
pub async fn settle(pids: &[u32], max_wait: Duration) {
    const WINDOW: Duration = Duration::from_millis(250);
    const BUSY_SHARE: f64 = 0.2;
    let started = Instant::now();
    let mut before = cpu_seconds(pids);
    while started.elapsed() < max_wait {
        tokio::time::sleep(WINDOW).await;
        let now = cpu_seconds(pids);
        if now - before < BUSY_SHARE * WINDOW.as_secs_f64() {
            return;
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_bytes_counts_memory_this_process_touched_and_nothing_for_a_missing_one() {
        let me = std::process::id();
        let before = resident_bytes(&[me]);
        let touched = vec![1u8; 64 << 20];
        let after = resident_bytes(&[me]);
        std::hint::black_box(&touched);
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        assert_eq!(resident_bytes(&[u32::MAX]), 0);
    }

    #[test]
    fn cpu_seconds_counts_this_process_busy_and_nothing_for_a_missing_one() {
        let me = std::process::id();
        let before = cpu_seconds(&[me]);
        // Spin until a clock tick or two of CPU time shows, within a bound.
        let started = Instant::now();
        let mut x = 0u64;
        while cpu_seconds(&[me]) < before + 0.02 && started.elapsed() < Duration::from_secs(10) {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let used = cpu_seconds(&[me]) - before;
        let wall = started.elapsed().as_secs_f64();
        assert!(used >= 0.02, "no CPU time counted after {wall:.1} s of spinning");
        // Every thread of this process together cannot use more than the machine's cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(used <= (wall + 0.05) * cores, "{used} s of CPU in {wall} s");
        assert_eq!(cpu_seconds(&[u32::MAX]), 0.0);
    }
}
