//! What `Snakepit.stats/1` and `Snakepit.tools/1` show of a `:thread` pool. The keys of the
//! stats map are those of the `:process` profile (test/snakepit/conformance_test.exs, "stats
//! have the same keys in both profiles"), plus `wakeups` and `parks`.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::dispatch;
use crate::error::Result;
use crate::pool::PoolInner;

pub fn stats_term<'a>(env: Env<'a>, pool: &PoolInner) -> Term<'a> {
    let c = &pool.counters;
    let uptime = pool.uptime().as_nanos().max(1) as f64;
    let threads: Vec<Term<'a>> = pool
        .slots
        .iter()
        .map(|s| {
            let busy = s.busy_ns.load(Ordering::Relaxed);
            map(
                env,
                &[
                    (atoms::name(), s.name.encode(env)),
                    (atoms::worker(), s.worker.encode(env)),
                    (
                        atoms::requests(),
                        s.requests.load(Ordering::Relaxed).encode(env),
                    ),
                    (atoms::busy_ms(), (busy as f64 / 1e6).encode(env)),
                    (atoms::busy_share(), (busy as f64 / uptime).encode(env)),
                ],
            )
        })
        .collect();
    let workers: Vec<Term<'a>> = pool
        .workers
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let w = slot.get();
            let requests: u64 = pool
                .slots
                .iter()
                .filter(|s| s.worker == i)
                .map(|s| s.requests.load(Ordering::Relaxed))
                .sum();
            map(
                env,
                &[
                    (atoms::index(), i.encode(env)),
                    (atoms::adapter(), w.class_name.encode(env)),
                    (atoms::requests(), requests.encode(env)),
                    (atoms::threads(), pool.config.threads_per_worker.encode(env)),
                    (
                        atoms::recycles(),
                        slot.recycles.load(Ordering::Relaxed).encode(env),
                    ),
                    (atoms::instance_id(), w.instance_id.encode(env)),
                ],
            )
        })
        .collect();
    let completed = c.completed.load(Ordering::Relaxed);
    let failed = c.failed.load(Ordering::Relaxed);
    map(
        env,
        &[
            (
                atoms::total_requests(),
                c.submitted.load(Ordering::Relaxed).encode(env),
            ),
            (
                atoms::active_requests(),
                c.active.load(Ordering::Relaxed).encode(env),
            ),
            (atoms::queued(), pool.queued().encode(env)),
            (atoms::completed(), completed.encode(env)),
            (atoms::failed(), failed.encode(env)),
            (
                atoms::cancelled(),
                c.cancelled.load(Ordering::Relaxed).encode(env),
            ),
            (
                atoms::rejected(),
                c.rejected.load(Ordering::Relaxed).encode(env),
            ),
            (atoms::max_workers(), pool.capacity().encode(env)),
            (atoms::pool_size(), pool.config.pool_size.encode(env)),
            (
                atoms::threads_per_worker(),
                pool.config.threads_per_worker.encode(env),
            ),
            (atoms::max_queue(), pool.config.max_queue.encode(env)),
            (atoms::thread_utilization(), threads.encode(env)),
            (atoms::workers(), workers.encode(env)),
            (
                atoms::uptime_ms(),
                (pool.uptime().as_millis() as u64).encode(env),
            ),
            (
                atoms::wakeups(),
                pool.idle.wakeups.load(Ordering::Relaxed).encode(env),
            ),
            (
                atoms::parks(),
                pool.idle.parks.load(Ordering::Relaxed).encode(env),
            ),
        ],
    )
}

fn map<'a>(env: Env<'a>, pairs: &[(rustler::Atom, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// `tools/1`: the adapter's commands with descriptions and parameters.
pub fn tools_term<'a>(env: Env<'a>, pool: &PoolInner) -> Result<Term<'a>> {
    Python::attach(|py| dispatch::tools(py, env, &pool.workers[0].get()))
}
