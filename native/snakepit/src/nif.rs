//! The NIFs: decode, delegate, encode. `Snakepit.Native` holds their stubs.

use std::sync::Arc;
use std::time::Duration;

use rustler::{Encoder, Env, OwnedEnv, ResourceArc, Term};

use crate::atoms;
use crate::error::Error;
use crate::job::{CancelOutcome, Job, JobCtl};
use crate::pool::{PoolConfig, PoolInner, PoolRef};
use crate::runtime::{self, RuntimeConfig};
use crate::stats;
use crate::thread;

fn error_tuple<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    (atoms::error(), e.to_term(env)).encode(env)
}

#[rustler::nif(schedule = "DirtyIo")]
fn start_runtime(env: Env<'_>, config: RuntimeConfig) -> Term<'_> {
    match runtime::ensure_started(&config) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_tuple(env, &e),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn python_info(env: Env<'_>) -> Term<'_> {
    match runtime::info(env) {
        Ok(t) => (atoms::ok(), t).encode(env),
        Err(e) => error_tuple(env, &e),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn start_pool(env: Env<'_>, config: PoolConfig) -> Term<'_> {
    match PoolInner::start(config, env.pid(), thread::thread_main) {
        Ok(inner) => {
            let pool = ResourceArc::new(PoolRef(inner));
            // The owner is the pool's Elixir process (the caller): see PoolRef's `down`.
            pool.monitor(Some(env), &env.pid());
            (atoms::ok(), pool).encode(env)
        }
        Err(e) => error_tuple(env, &e),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn stop_pool(env: Env<'_>, pool: ResourceArc<PoolRef>, grace_ms: u64) -> Term<'_> {
    let stragglers: Vec<(String, &str)> = pool
        .0
        .stop(Duration::from_millis(grace_ms))
        .into_iter()
        .map(|s| (s.name, s.reason))
        .collect();
    (atoms::ok(), stragglers).encode(env)
}

#[rustler::nif]
fn submit<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolRef>,
    reference: Term<'a>,
    command: Term<'a>,
    arguments: Term<'a>,
) -> Term<'a> {
    submit_job(env, &pool.0, reference, command, arguments, None)
}

/// Like submit, for a command whose iterator is streamed; `window` chunks may be in flight.
#[rustler::nif]
fn submit_stream<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolRef>,
    reference: Term<'a>,
    command: Term<'a>,
    arguments: Term<'a>,
    window: u64,
) -> Term<'a> {
    submit_job(env, &pool.0, reference, command, arguments, Some(window))
}

fn submit_job<'a>(
    env: Env<'a>,
    inner: &Arc<PoolInner>,
    reference: Term<'a>,
    command: Term<'a>,
    args: Term<'a>,
    window: Option<u64>,
) -> Term<'a> {
    let ctl = ResourceArc::new(JobCtl::new(Arc::downgrade(inner)));
    if let Some(n) = window {
        ctl.grant(n);
    }
    let caller = env.pid();
    ctl.set_monitor(ctl.monitor(Some(env), &caller));
    let job_env = OwnedEnv::new();
    let job = Box::new(Job {
        reference: job_env.save(reference),
        command: job_env.save(command),
        args: job_env.save(args),
        env: job_env,
        caller,
        ctl: ctl.clone(),
        stream: window.is_some(),
    });
    match inner.submit(job) {
        Ok(()) => (atoms::ok(), ctl).encode(env),
        Err((job, e)) => {
            if let Some(mon) = job.ctl.take_monitor() {
                job.ctl.demonitor(Some(env), &mon);
            }
            error_tuple(env, &e)
        }
    }
}

/// A stream's consumer wants `n` more chunks.
#[rustler::nif]
fn stream_demand(job: ResourceArc<JobCtl>, n: u64) -> rustler::Atom {
    job.grant(n);
    atoms::ok()
}

#[rustler::nif]
fn cancel(job: ResourceArc<JobCtl>) -> rustler::Atom {
    match job.cancel() {
        CancelOutcome::Cancelled => atoms::cancelled(),
        CancelOutcome::Done => atoms::done(),
    }
}

#[rustler::nif]
fn stats(env: Env<'_>, pool: ResourceArc<PoolRef>) -> Term<'_> {
    stats::stats_term(env, &pool.0)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn tools(env: Env<'_>, pool: ResourceArc<PoolRef>) -> Term<'_> {
    match stats::tools_term(env, &pool.0) {
        Ok(t) => (atoms::ok(), t).encode(env),
        Err(e) => error_tuple(env, &e),
    }
}

#[rustler::nif]
fn build_info(env: Env<'_>) -> Term<'_> {
    (runtime::FREE_THREADED, crate::convert::MAX_DEPTH).encode(env)
}
