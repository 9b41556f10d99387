//! Whether a spinning pool thread would take a CPU someone else is waiting for
//! (docs/architecture.md, "Under load").
//!
//! Spinning for the next job saves a wake-up when a core is free. When every core is taken
//! (other OS processes, or the BEAM's own busy schedulers), the spinner holds a core that the
//! BEAM scheduler delivering its reply is waiting for: measured on 2 cores, each call then
//! took the whole spin time longer (10 µs without spinning, 60 µs with 50 µs spins). So a
//! thread spins only while the runnable threads on the machine (the kernel's `nr_running`,
//! 4th field of /proc/loadavg, the reader included) are no more than the cores. The
//! file is read at most every [`RECHECK`]; elsewhere than Linux spinning is always allowed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a decision stands.
pub const RECHECK: Duration = Duration::from_millis(20);

static ALLOWED: AtomicBool = AtomicBool::new(true);
static CHECKED_AT_US: AtomicU64 = AtomicU64::new(0);
/// Decisions that said no (for stats and tests).
pub static CONTENDED: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The machine's cores, once.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Whether spinning is worth it now (re-read at most every [`RECHECK`]).
pub fn spin_allowed(cores: usize) -> bool {
    let now = epoch().elapsed().as_micros() as u64;
    let last = CHECKED_AT_US.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < RECHECK.as_micros() as u64 {
        return ALLOWED.load(Ordering::Relaxed);
    }
    // One thread re-reads; the others keep the standing decision meanwhile.
    if CHECKED_AT_US
        .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return ALLOWED.load(Ordering::Relaxed);
    }
    let allowed = match runnable() {
        // The reader (the spinner) is one of them: spin while every runnable thread, the
        // BEAM scheduler that will submit the next job among them, has a core.
        Some(n) => n <= cores,
        None => true,
    };
    if !allowed {
        CONTENDED.fetch_add(1, Ordering::Relaxed);
    }
    ALLOWED.store(allowed, Ordering::Relaxed);
    allowed
}

/// Runnable threads on the machine right now, the reader included.
fn runnable() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_loadavg(&text)
}

fn parse_loadavg(text: &str) -> Option<usize> {
    let field = text.split_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_count() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(parse_loadavg("garbage"), None);
    }

    #[test]
    fn decides_and_keeps_the_decision() {
        let first = spin_allowed(2);
        // Within RECHECK the standing decision is returned without reading the file again.
        assert_eq!(spin_allowed(2), first);
    }
}
