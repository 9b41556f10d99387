//! What `Snakepit.stats/1` and `Snakepit.tools/1` show of a `:thread` pool. The keys of
//! `Stats` are those of the `:process` profile (test/snakepit/conformance_test.exs, "stats have
//! the same keys in both profiles"), plus `wakeups`, `parks`, `inline_calls` and
//! `inline_backoffs` (inline.rs).

use std::sync::atomic::Ordering;

use rustler::{Env, NifMap, Term};

use crate::dispatch;
use crate::error::Result;
use crate::pool::PoolInner;

#[derive(NifMap)]
#[rustler(encode)]
pub struct Stats {
    pub total_requests: u64,
    pub active_requests: usize,
    pub queued: usize,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub max_workers: usize,
    pub pool_size: usize,
    pub threads_per_worker: usize,
    pub max_queue: usize,
    pub thread_utilization: Vec<ThreadStats>,
    pub workers: Vec<WorkerStats>,
    pub uptime_ms: u64,
    /// Wake-ups of parked threads, and parks (see idle.rs).
    pub wakeups: usize,
    pub parks: usize,
    /// Calls run on the caller's scheduler, and the back-offs that stopped them (inline.rs).
    pub inline_calls: u64,
    pub inline_backoffs: u64,
}

/// One pool thread, in `thread_utilization`.
#[derive(NifMap)]
#[rustler(encode)]
pub struct ThreadStats {
    pub name: String,
    pub worker: usize,
    pub requests: u64,
    pub busy_ms: f64,
    /// Share of the pool's uptime the thread spent running jobs.
    pub busy_share: f64,
}

/// One worker (adapter instance), in `workers`.
#[derive(NifMap)]
#[rustler(encode)]
pub struct WorkerStats {
    pub index: usize,
    pub adapter: String,
    pub requests: u64,
    pub threads: usize,
    pub recycles: u64,
    pub instance_id: u64,
}

pub fn stats(pool: &PoolInner) -> Stats {
    let c = &pool.counters;
    let uptime = pool.uptime();
    let uptime_ns = uptime.as_nanos().max(1) as f64;
    let thread_utilization = pool
        .slots
        .iter()
        .map(|s| {
            let busy = s.busy_ns.load(Ordering::Relaxed) as f64;
            ThreadStats {
                name: s.name.clone(),
                worker: s.worker,
                requests: s.requests.load(Ordering::Relaxed),
                busy_ms: busy / 1e6,
                busy_share: busy / uptime_ns,
            }
        })
        .collect();
    let workers = pool
        .workers
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let w = slot.get();
            WorkerStats {
                index: i,
                adapter: w.class_name.clone(),
                requests: pool
                    .slots
                    .iter()
                    .filter(|s| s.worker == i)
                    .map(|s| s.requests.load(Ordering::Relaxed))
                    .sum::<u64>()
                    + pool.inline.per_worker[i].load(Ordering::Relaxed),
                threads: pool.config.threads_per_worker,
                recycles: slot.recycles.load(Ordering::Relaxed),
                instance_id: w.instance_id,
            }
        })
        .collect();
    Stats {
        total_requests: c.submitted.load(Ordering::Relaxed),
        active_requests: c.active.load(Ordering::Relaxed),
        queued: pool.queued(),
        completed: c.completed.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        cancelled: c.cancelled.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        max_workers: pool.capacity(),
        pool_size: pool.config.pool_size,
        threads_per_worker: pool.config.threads_per_worker,
        max_queue: pool.config.max_queue,
        thread_utilization,
        workers,
        uptime_ms: uptime.as_millis() as u64,
        wakeups: pool.idle.wakeups.load(Ordering::Relaxed),
        parks: pool.idle.parks.load(Ordering::Relaxed),
        inline_calls: pool.inline.calls.load(Ordering::Relaxed),
        inline_backoffs: pool.inline.backoffs.load(Ordering::Relaxed),
    }
}

/// `tools/1`: the adapter's commands with descriptions and parameters.
pub fn tools<'a>(env: Env<'a>, pool: &PoolInner) -> Result<Term<'a>> {
    if let Some(interps) = &pool.interps {
        return interps.tools(env); // made in the worker's own interpreter (subinterp/)
    }
    crate::gil_gate::attach(|py| dispatch::tools(py, env, &pool.workers[0].get()))
}
