//! Inline calls: a short command run by `submit` itself, on the calling BEAM scheduler, with
//! no hand-off to a pool thread (docs/architecture.md, "Under load", "Inline calls").
//!
//! On a machine whose cores are all taken, handing a call to a pool thread waits for the
//! kernel to schedule that thread: ~8 µs where a raw port echo takes ~13 µs. A call run on the
//! caller's scheduler costs 1–2 µs. It is safe only when it cannot hold the scheduler, so it
//! runs only when all of this holds, and otherwise the call is handed off as usual:
//!
//! - the adapter declared the command short: `@tool(inline=True)` (a plain function; the
//!   Python side refuses `async def` and generators), and its arguments are small (not what
//!   offload.rs would move to a dirty scheduler);
//! - the pool is a `:thread` pool (its instances live in the main interpreter) with no
//!   recycling policy (a recycle must run on a pool thread), and is not stopping;
//! - no Snakepit thread holds or may take the main interpreter (gil_gate.rs), and no `async
//!   def` call is in flight (its event loop runs Python on a thread Snakepit does not count);
//! - the pool is not backing off (below).
//!
//! Each inline call is timed. Two in a row that took over 1 ms (the command was wrongly
//! declared short, blocked, or waited for a GIL held by a thread the adapter started) stop
//! inline calls in the pool for 1 s, doubling with each strike up to 64 s, and back to 1 s
//! after ten quiet minutes (`inline_backoffs` in stats). One slow call alone is not a strike:
//! on a busy machine the kernel may preempt the scheduler in the middle of any call. So a
//! wrong declaration costs two slow calls per back-off, never a stuck scheduler. The time is
//! also charged to the scheduler (`enif_consume_timeslice`).
//!
//! Inside an inline call `elixir.call` raises (its wait would hold the scheduler), and the
//! call has no timeout or cancellation: it is over before either could act.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::{ffi, Python};
use rustler::{Binary, Encoder, Env, Term};

use crate::atoms;
use crate::dispatch;
use crate::error::Result;
use crate::pool::PoolInner;
use crate::worker::Worker;

/// An inline call that took longer was slow.
const SLOW: Duration = Duration::from_millis(1);
/// The longest back-off: the first << 6.
const MAX_STRIKES: u32 = 6;
/// A strike this long after the last one starts again at 1 s.
const QUIET: Duration = Duration::from_secs(600);

/// A pool's inline calls.
pub struct Inline {
    /// Whether this pool may run calls inline at all, and a filter of the commands its
    /// adapter declares inline (bit `name_bit(name)` set for each; 0: none, so other pools pay
    /// one load per call, and other commands rarely more).
    enabled: bool,
    names: AtomicU64,
    /// Round robin over the workers.
    next: AtomicU64,
    /// Calls run inline, in all and per worker (for stats).
    pub calls: AtomicU64,
    pub per_worker: Vec<AtomicU64>,
    /// Slow inline calls in a row; strikes so far, and until when (µs of pool uptime) inline
    /// calls are off.
    slow_in_a_row: AtomicU32,
    pub backoffs: AtomicU64,
    strikes: AtomicU32,
    last_strike_us: AtomicU64,
    resume_at_us: AtomicU64,
    /// The first back-off (`SNAKEPIT_INLINE_PAUSE_MS`, 1000 unless set, read at pool start).
    pause: Duration,
}

impl Inline {
    pub fn new(enabled: bool, workers: &[Worker]) -> Inline {
        let inline = Inline {
            enabled,
            names: AtomicU64::new(0),
            next: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            per_worker: workers.iter().map(|_| AtomicU64::new(0)).collect(),
            slow_in_a_row: AtomicU32::new(0),
            backoffs: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
            last_strike_us: AtomicU64::new(0),
            resume_at_us: AtomicU64::new(0),
            pause: std::env::var("SNAKEPIT_INLINE_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(1), Duration::from_millis),
        };
        inline.set_commands(workers);
        inline
    }

    /// Notes which commands the instances (new ones after a reload) declare inline.
    pub fn set_commands(&self, workers: &[Worker]) {
        let mask = workers
            .iter()
            .flat_map(|w| w.inline.iter())
            .fold(0, |m, n| m | name_bit(n.as_bytes()));
        self.names.store(mask, Ordering::Relaxed);
    }

    fn backing_off(&self, pool: &PoolInner) -> bool {
        let at = self.resume_at_us.load(Ordering::Relaxed);
        at != 0 && (pool.uptime().as_micros() as u64) < at
    }

    /// Counts an inline call that took `elapsed`: the second slow one in a row is a strike.
    fn timed(&self, pool: &PoolInner, elapsed: Duration) {
        if elapsed <= SLOW {
            if self.slow_in_a_row.load(Ordering::Relaxed) != 0 {
                self.slow_in_a_row.store(0, Ordering::Relaxed);
            }
        } else if self.slow_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= 2 {
            self.slow_in_a_row.store(0, Ordering::Relaxed);
            self.strike(pool);
        }
    }

    fn strike(&self, pool: &PoolInner) {
        let now = pool.uptime();
        let last = self
            .last_strike_us
            .swap(now.as_micros() as u64, Ordering::Relaxed);
        if (now.as_micros() as u64).saturating_sub(last) > QUIET.as_micros() as u64 {
            self.strikes.store(0, Ordering::Relaxed);
        }
        let strikes = self
            .strikes
            .fetch_add(1, Ordering::Relaxed)
            .min(MAX_STRIKES);
        let pause = self.pause * (1 << strikes);
        let at = (now + pause).as_micros() as u64;
        self.resume_at_us.store(at, Ordering::Relaxed);
        self.backoffs.fetch_add(1, Ordering::Relaxed);
    }
}

/// A command name's bit in [`Inline::names`] (FNV-1a, folded to 0..64).
fn name_bit(name: &[u8]) -> u64 {
    let hash = name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    1 << (hash % 64)
}

thread_local! {
    /// This scheduler thread has its lasting Python thread state.
    static PRIMED: Cell<bool> = const { Cell::new(false) };
    /// An inline call runs on this thread now.
    static RUNNING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside an inline call (callback.rs refuses `elixir.call`).
pub fn running() -> bool {
    RUNNING.with(|r| r.get())
}

struct Running;

impl Running {
    fn enter() -> Running {
        RUNNING.with(|r| r.set(true));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(false));
    }
}

/// Gives this thread a lasting thread state: `PyGILState_Ensure` without the release that
/// would delete it, then detached, so each later attach only takes the GIL. A thread state
/// per call would cost ~15 µs (docs/architecture.md, "What shaped the pool").
fn prime() {
    PRIMED.with(|primed| {
        if !primed.get() {
            unsafe {
                ffi::PyGILState_Ensure();
                ffi::PyEval_SaveThread();
            }
            primed.set(true);
        }
    })
}

/// `{:done, reply}` when the call ran here, None when it must be handed off.
pub fn try_call<'a>(
    env: Env<'a>,
    pool: &PoolInner,
    command: Term<'a>,
    args: Term<'a>,
) -> Option<Term<'a>> {
    let state = &pool.inline;
    // Cheapest first: with many callers the pool's threads are busy and this ends at the
    // count, having written nothing shared.
    let names = state.names.load(Ordering::Relaxed);
    if !state.enabled
        || names == 0
        || crate::gil_gate::in_use()
        || pool.shutdown.load(Ordering::Relaxed)
        || state.backing_off(pool)
    {
        return None;
    }
    let name = Binary::from_term(command).ok()?;
    if names & name_bit(name.as_slice()) == 0 {
        return None;
    }
    let w = (state.next.fetch_add(1, Ordering::Relaxed) % pool.workers.len() as u64) as usize;
    let worker = pool.workers[w].get();
    if !worker
        .inline
        .iter()
        .any(|n| n.as_bytes() == name.as_slice())
        || crate::offload::is_large(args)
    {
        return None;
    }
    let turn = crate::gil_gate::inline_turn()?;
    if crate::aio::in_flight_count() > 0 {
        return None;
    }

    prime();
    crate::refs::set_thread_pool(&pool.config.name);
    let t0 = Instant::now();
    let running = Running::enter();
    let result: Result<Term<'a>> = Python::attach(|py| {
        dispatch::invoke(py, &worker, command, args)
            .and_then(|obj| dispatch::result_term(py, env, command, &obj))
    });
    drop(running);
    drop(turn);
    let elapsed = t0.elapsed();
    state.timed(pool, elapsed);
    let percent = (elapsed.as_micros() / 10).min(100) as i32;
    if percent > 0 {
        rustler::schedule::consume_timeslice(env, percent);
    }

    let c = &pool.counters;
    c.submitted.fetch_add(1, Ordering::Relaxed);
    if result.is_ok() {
        &c.completed
    } else {
        &c.failed
    }
    .fetch_add(1, Ordering::Relaxed);
    state.calls.fetch_add(1, Ordering::Relaxed);
    state.per_worker[w].fetch_add(1, Ordering::Relaxed);
    // Never the last holder of an instance today (a reload's `worker::retire` holds the old
    // one until its calls end); should it be, the instance's Python objects go to the release
    // thread instead of being dropped on a scheduler (release.rs).
    if std::sync::Arc::strong_count(&worker) == 1 {
        crate::release::python(worker, None);
    }
    Some((atoms::done(), result).encode(env))
}
