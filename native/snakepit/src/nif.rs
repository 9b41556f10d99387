//! The NIFs: decode, delegate, encode. `Snakepit.Native` holds their stubs. A NIF that can
//! fail returns `Result<T, Error>`, which reaches Elixir as `{:ok, t}` or `{:error, map}`.

use std::sync::Arc;
use std::time::Duration;

use rustler::{Encoder, Env, OwnedEnv, ResourceArc, Term};

use crate::atoms;
use crate::error::Result;
use crate::job::{CancelOutcome, Job, JobCtl};
use crate::offload;
use crate::pool::{PoolConfig, PoolInner, PoolRef, Straggler};
use crate::runtime::{self, PythonInfo, RuntimeConfig};
use crate::stats::{self, Stats};
use crate::thread;

/// `{:ok, {}}` (Rust's `Ok(())`) once the interpreter runs.
#[rustler::nif(schedule = "DirtyIo")]
fn start_runtime(config: RuntimeConfig) -> Result<()> {
    runtime::ensure_started(&config)
}

#[rustler::nif(schedule = "DirtyIo")]
fn python_info() -> Result<PythonInfo> {
    runtime::info()
}

#[rustler::nif(schedule = "DirtyIo")]
fn start_pool(env: Env<'_>, config: PoolConfig) -> Result<ResourceArc<PoolRef>> {
    let inner = if config.subinterpreters {
        crate::subinterp::start(config, env.pid())?
    } else {
        PoolInner::start(config, env.pid(), thread::thread_main)?
    };
    let pool = ResourceArc::new(PoolRef(inner));
    // The owner is the pool's Elixir process (the caller): see PoolRef's `down`.
    pool.monitor(Some(env), &env.pid());
    Ok(pool)
}

/// `Snakepit.reload/1`: re-imports the changed code and replaces every instance (reload.rs);
/// the names of the modules re-imported.
#[rustler::nif(schedule = "DirtyIo")]
fn reload(pool: ResourceArc<PoolRef>, roots: Vec<String>) -> Result<Vec<String>> {
    crate::reload::reload(&pool.0, roots)
}

/// The threads still running when the stop returned, as `[{name, reason}]`.
#[rustler::nif(schedule = "DirtyIo")]
fn stop_pool(pool: ResourceArc<PoolRef>, grace_ms: u64) -> Vec<Straggler> {
    pool.0.stop(Duration::from_millis(grace_ms))
}

/// `{:ok, job}` or `{:error, map}`. Arguments too large to copy on a normal scheduler make it
/// continue as a dirty-CPU NIF (offload.rs).
#[rustler::nif]
fn submit<'a>(
    env: Env<'a>,
    pool: Term<'a>,
    reference: Term<'a>,
    command: Term<'a>,
    arguments: Term<'a>,
) -> Term<'a> {
    // A short command may run right here (inline.rs): `{:done, reply}`.
    if let Ok(p) = pool.decode::<ResourceArc<PoolRef>>() {
        if let Some(done) = crate::inline::try_call(env, &p.0, command, arguments) {
            return done;
        }
    }
    submit_or_offload(env, &[pool, reference, command, arguments])
}

/// Like submit, for a command whose iterator is streamed; `window` chunks may be in flight.
#[rustler::nif]
fn submit_stream<'a>(
    env: Env<'a>,
    pool: Term<'a>,
    reference: Term<'a>,
    command: Term<'a>,
    arguments: Term<'a>,
    window: Term<'a>,
) -> Term<'a> {
    submit_or_offload(env, &[pool, reference, command, arguments, window])
}

/// `[pool, reference, command, arguments]` and, for a stream, `window`: submitted here, or on a
/// dirty-CPU scheduler when the arguments are large.
fn submit_or_offload<'a>(env: Env<'a>, args: &[Term<'a>]) -> Term<'a> {
    if offload::is_large(args[3]) {
        return offload::reschedule(env, c"submit_dirty", submit_dirty, args);
    }
    submit_terms(env, args)
}

fn submit_terms<'a>(env: Env<'a>, args: &[Term<'a>]) -> Term<'a> {
    let (pool, reference, command, arguments) = (args[0], args[1], args[2], args[3]);
    let result = match (pool.decode::<ResourceArc<PoolRef>>(), args.get(4)) {
        (Ok(pool), None) => submit_job(env, &pool.0, reference, command, arguments, None),
        (Ok(pool), Some(window)) => match window.decode::<u64>() {
            Ok(n) => submit_job(env, &pool.0, reference, command, arguments, Some(n)),
            Err(_) => Err(crate::error::Error::conversion("not a pool and a window")),
        },
        (Err(_), None) => Err(crate::error::Error::conversion("not a pool")),
        (Err(_), Some(_)) => Err(crate::error::Error::conversion("not a pool and a window")),
    };
    result.encode(env)
}

/// `submit` or `submit_stream` (by its argument count), continued on a dirty-CPU scheduler
/// (`enif_schedule_nif`).
unsafe extern "C" fn submit_dirty(
    env: *mut rustler::sys::ErlNifEnv,
    argc: i32,
    argv: *const rustler::sys::ErlNifTerm,
) -> rustler::sys::ErlNifTerm {
    let marker = ();
    let env = Env::new(&marker, env);
    let args: Vec<Term> = std::slice::from_raw_parts(argv, argc as usize)
        .iter()
        .map(|&t| Term::new(env, t))
        .collect();
    submit_terms(env, &args).as_c_arg()
}

fn submit_job<'a>(
    env: Env<'a>,
    inner: &Arc<PoolInner>,
    reference: Term<'a>,
    command: Term<'a>,
    args: Term<'a>,
    window: Option<u64>,
) -> Result<ResourceArc<JobCtl>> {
    let (ctl, job) = new_job(env, inner, reference, command, args, window);
    queue(env, inner, ctl, job)
}

/// A job of the caller (`env`'s process, monitored) and its control resource; a stream
/// (`window` set) starts with that many chunks of credit.
pub(crate) fn new_job<'a>(
    env: Env<'a>,
    inner: &Arc<PoolInner>,
    reference: Term<'a>,
    command: Term<'a>,
    args: Term<'a>,
    window: Option<u64>,
) -> (ResourceArc<JobCtl>, Box<Job>) {
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
    (ctl, job)
}

/// Puts `job` on the pool's queue; a refused job drops its caller monitor.
pub(crate) fn queue(
    env: Env<'_>,
    inner: &Arc<PoolInner>,
    ctl: ResourceArc<JobCtl>,
    job: Box<Job>,
) -> Result<ResourceArc<JobCtl>> {
    match inner.submit(job) {
        Ok(()) => Ok(ctl),
        Err((job, e)) => {
            if let Some(mon) = job.ctl.take_monitor() {
                job.ctl.demonitor(Some(env), &mon);
            }
            Err(e)
        }
    }
}

/// A stream's consumer wants `n` more chunks.
#[rustler::nif]
fn stream_demand(job: ResourceArc<JobCtl>, n: u64) -> rustler::Atom {
    job.grant(n);
    atoms::ok()
}

/// Cancels a job (timeout or caller exit): `:cancelled` (it will never reply) or `:done` (its
/// reply has been or is being sent).
#[rustler::nif]
fn cancel(job: ResourceArc<JobCtl>) -> rustler::Atom {
    match job.cancel() {
        CancelOutcome::Cancelled => atoms::cancelled(),
        CancelOutcome::Done => atoms::done(),
    }
}

#[rustler::nif]
fn stats(pool: ResourceArc<PoolRef>) -> Stats {
    stats::stats(&pool.0)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn tools(env: Env<'_>, pool: ResourceArc<PoolRef>) -> Result<Term<'_>> {
    stats::tools(env, &pool.0)
}

#[rustler::nif]
fn build_info() -> (bool, usize) {
    (runtime::FREE_THREADED, crate::convert::MAX_DEPTH)
}
