//! Python calling Elixir (`snakepit_bridge.elixir.call`), and the re-entrant wait
//! (docs/architecture.md, "Python calling Elixir").
//!
//! A call sends `{:snakepit_elixir_call, id, name, args, caller}` to the `Snakepit.Functions`
//! process, which runs the function in a fresh supervised process and answers with the NIF
//! `function_reply(id, reply)`. The Python thread waits detached (the GIL released) on its
//! call's channel. While it waits, the process running the function carries the call's id
//! (its "chain"); a `Snakepit.execute` on the same pool from that process is submitted to this
//! channel (`submit_nested`) rather than the pool's queue, and the waiting pool thread runs it
//! itself. So a call chain Python -> Elixir -> Python never needs a second pool thread, and a
//! 1x1 pool does not deadlock. Chains are at most `MAX_DEPTH` waits deep on one thread.
//!
//! The wait ends with the reply, the call's timeout, or the cancellation of the job the thread
//! runs (its caller timed out or died, or the pool stops), which is checked every `POLL`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use rustler::env::SavedTerm;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};

use crate::atoms;
use crate::convert;
use crate::error::{Error, Result};
use crate::job::{Job, JobCtl};
use crate::mailer;
use crate::pool::{PoolInner, PoolRef};
use crate::slot::ThreadSlot;
use crate::thread;

/// How many `elixir.call` waits may be nested on one thread (Python -> Elixir -> Python -> ...).
pub const MAX_DEPTH: usize = 16;

/// How often a wait checks its job's cancellation and the pool's stop.
const POLL: Duration = Duration::from_millis(20);

mod cb_atoms {
    rustler::atoms! { snakepit_elixir_call, snakepit_elixir_cancel, gone }
}

/// What reaches a waiting call: its reply, or a nested job of its chain.
enum Msg {
    Reply(OwnedEnv, SavedTerm),
    Nested(Box<Job>),
}

struct Pending {
    tx: Sender<Msg>,
    /// The pool whose thread waits (None: not a pool thread; nested jobs go to their queue).
    pool: Option<Weak<PoolInner>>,
}

fn pending() -> &'static Mutex<HashMap<u64, Pending>> {
    static PENDING: OnceLock<Mutex<HashMap<u64, Pending>>> = OnceLock::new();
    PENDING.get_or_init(|| Mutex::new(HashMap::new()))
}

fn dispatcher() -> &'static Mutex<Option<LocalPid>> {
    static PID: OnceLock<Mutex<Option<LocalPid>>> = OnceLock::new();
    PID.get_or_init(|| Mutex::new(None))
}

/// The pool thread this is, and the jobs it runs (outermost first).
struct Context {
    pool: Weak<PoolInner>,
    slot: Arc<ThreadSlot>,
    index: usize,
    jobs: Vec<(ResourceArc<JobCtl>, LocalPid)>,
    depth: usize,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Called by each pool thread when it starts.
pub fn register_thread(pool: &Arc<PoolInner>, slot: &Arc<ThreadSlot>, index: usize) {
    CONTEXT.with(|c| {
        *c.borrow_mut() = Some(Context {
            pool: Arc::downgrade(pool),
            slot: Arc::clone(slot),
            index,
            jobs: Vec::new(),
            depth: 0,
        })
    });
}

/// The pool this pool thread belongs to (None on other threads).
pub fn current_pool() -> Option<Arc<PoolInner>> {
    CONTEXT.with(|c| c.borrow().as_ref().and_then(|c| c.pool.upgrade()))
}

/// While alive, `job` is the one this pool thread runs (for the caller's `$callers` and the
/// wait's cancellation).
pub struct JobGuard(());

pub fn enter(job: &Job) -> JobGuard {
    CONTEXT.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.jobs.push((job.ctl.clone(), job.caller));
        }
    });
    JobGuard(())
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        CONTEXT.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                c.jobs.pop();
            }
        });
    }
}

/// How a wait ended, for `snakepit_bridge.elixir` (which raises accordingly).
enum Outcome {
    Reply(OwnedEnv, SavedTerm),
    Timeout,
    Cancelled,
}

/// `_snakepit_native.elixir_call(name, args, timeout)`: calls the registered Elixir function
/// `name`. Returns `("reply", reply)` (the function's reply as `Snakepit.Functions` sent it),
/// `("timeout", None)`, `("cancelled", None)`, `("depth", MAX_DEPTH)` or
/// `("unavailable", message)`.
#[pyfunction]
#[pyo3(signature = (name, args, timeout=None))]
pub fn elixir_call<'py>(
    py: Python<'py>,
    name: &str,
    args: &Bound<'py, PyTuple>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let status =
        |s: &str, v: Bound<'py, PyAny>| PyTuple::new(py, [s.into_pyobject(py)?.into_any(), v]);
    if crate::inline::running() {
        return status(
            "inline",
            format!(
                "elixir.call({name:?}) cannot run in a command declared @tool(inline=True): \
                 it runs on a BEAM scheduler, which must not wait; drop inline=True"
            )
            .into_pyobject(py)?
            .into_any(),
        );
    }
    let depth = CONTEXT.with(|c| c.borrow().as_ref().map_or(0, |c| c.depth));
    if depth >= MAX_DEPTH {
        return status("depth", MAX_DEPTH.into_pyobject(py)?.into_any());
    }
    let Some(to) = *dispatcher().lock() else {
        return status(
            "unavailable",
            "the :snakepit application is not running (no Snakepit.Functions process)"
                .into_pyobject(py)?
                .into_any(),
        );
    };
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let (caller, pool) = CONTEXT.with(|c| match c.borrow().as_ref() {
        Some(c) => (c.jobs.last().map(|j| j.1), Some(c.pool.clone())),
        None => (None, None),
    });

    let env = OwnedEnv::new();
    let list = PyList::new(py, args.iter())?;
    let request = env
        .run(|e| {
            let args = convert::py_to_term(e, list.as_any())?;
            let caller = match caller {
                Some(pid) => pid.encode(e),
                None => atoms::nil().encode(e),
            };
            let msg = (cb_atoms::snakepit_elixir_call(), id, name, args, caller).encode(e);
            Ok::<_, Error>(env.save(msg))
        })
        .map_err(convert::to_py_err)?;

    let (tx, rx) = crossbeam_channel::unbounded();
    let nested_ok = pool.is_some();
    pending().lock().insert(id, Pending { tx, pool });
    send(env, to, request);

    let deadline = timeout
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    CONTEXT.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.depth += 1;
        }
    });
    let outcome = wait(py, &rx, deadline, nested_ok);
    CONTEXT.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.depth -= 1;
        }
    });
    finish(id, &rx);

    match outcome {
        Outcome::Reply(env, saved) => match env.run(|e| convert::term_to_py(py, saved.load(e))) {
            Ok(value) => status("reply", value),
            Err(e) => status(
                "unconvertible",
                format!("the result of Elixir function {name:?} cannot be converted: {e}")
                    .into_pyobject(py)?
                    .into_any(),
            ),
        },
        Outcome::Timeout => {
            cancel_remote(to, id);
            status("timeout", py.None().into_bound(py))
        }
        Outcome::Cancelled => {
            cancel_remote(to, id);
            delivered();
            status("cancelled", py.None().into_bound(py))
        }
    }
}

/// `_snakepit_native.elixir_depth()`: how many `elixir.call` waits this thread is inside.
#[pyfunction]
pub fn elixir_depth() -> usize {
    CONTEXT.with(|c| c.borrow().as_ref().map_or(0, |c| c.depth))
}

fn send(env: OwnedEnv, to: LocalPid, term: SavedTerm) {
    if mailer::on_scheduler_thread() {
        mailer::post(mailer::Mail::Term { env, to, term });
    } else {
        let mut env = env;
        let _ = env.send_and_clear(&to, |e| term.load(e));
    }
}

fn cancel_remote(to: LocalPid, id: u64) {
    let env = OwnedEnv::new();
    let term = env.run(|e| env.save((cb_atoms::snakepit_elixir_cancel(), id).encode(e)));
    send(env, to, term);
}

/// The job this thread runs, if any, and whether it was cancelled or its pool stopped.
fn cancelled() -> bool {
    CONTEXT.with(|c| {
        c.borrow().as_ref().is_some_and(|c| {
            c.jobs.last().is_some_and(|j| j.0.is_cancelled()) || c.slot.run.lock().stopped
        })
    })
}

/// The wait ends with `Cancelled` raised by `elixir.call` itself: a cancellation the
/// interrupter armed before the wait must not be raised a second time (interrupt.rs).
fn delivered() {
    CONTEXT.with(|c| {
        if let Some(c) = c.borrow().as_ref() {
            let mut run = c.slot.run.lock();
            if run.pending {
                run.pending = false;
                run.delivered = true;
            }
        }
    });
}

fn set_waiting(on: bool) {
    CONTEXT.with(|c| {
        if let Some(c) = c.borrow().as_ref() {
            c.slot.run.lock().waiting = on;
        }
    });
}

fn wait(py: Python<'_>, rx: &Receiver<Msg>, deadline: Option<Instant>, nested_ok: bool) -> Outcome {
    loop {
        set_waiting(true);
        let got = py.detach(|| loop {
            if cancelled() {
                return Err(Outcome::Cancelled);
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Outcome::Timeout);
                    }
                    left.min(POLL)
                }
                None => POLL,
            };
            match rx.recv_timeout(slice) {
                Ok(msg) => return Ok(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Outcome::Cancelled),
            }
        });
        set_waiting(false);
        match got {
            Ok(Msg::Reply(env, saved)) => return Outcome::Reply(env, saved),
            Ok(Msg::Nested(job)) if nested_ok => run_nested(py, *job),
            Ok(Msg::Nested(job)) => resubmit(job),
            Err(outcome) => return outcome,
        }
    }
}

/// Runs a nested job of this thread's chain on this thread, as the pool's loop would, keeping
/// the waiting job's interruption state aside meanwhile.
fn run_nested(py: Python<'_>, job: Job) {
    let ctx = CONTEXT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|c| (c.pool.upgrade(), Arc::clone(&c.slot), c.index))
    });
    let Some((Some(pool), slot, index)) = ctx else {
        resubmit(Box::new(job));
        return;
    };
    let outer = std::mem::take(&mut *slot.run.lock());
    let worker = pool.workers[slot.worker].get();
    thread::run_job(py, &pool, &worker, &slot, index, job);
    drop(worker);
    // run_job counted this thread ready again; it is still busy with the waiting job.
    pool.idle.ready_done();
    let mut run = slot.run.lock();
    *run = outer;
    run.waiting = false;
}

/// A nested job that cannot run on the waiting thread goes to its pool's queue.
fn resubmit(job: Box<Job>) {
    let pool = match current_pool() {
        Some(pool) => pool,
        None => {
            job.reply(Err(Error::Pool("the pool stopped".into())));
            return;
        }
    };
    if let Err((job, e)) = pool.submit(job) {
        job.reply(Err(e));
    }
}

/// The call is over: no more messages reach it; nested jobs still queued for it go to their
/// pool's queue.
fn finish(id: u64, rx: &Receiver<Msg>) {
    pending().lock().remove(&id);
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Nested(job) = msg {
            resubmit(job);
        }
    }
}

/// Sends `reply` to the waiting call `id`; false when the call is over.
fn reply(id: u64, reply: Term<'_>) -> bool {
    let map = pending().lock();
    let Some(p) = map.get(&id) else {
        return false;
    };
    let env = OwnedEnv::new();
    let saved = env.save(reply);
    p.tx.send(Msg::Reply(env, saved)).is_ok()
}

/// Hands a job of call `id`'s chain to the waiting thread, if that call still waits on a
/// thread of `pool`; else gives it back.
fn submit_to_chain(
    pool: &Arc<PoolInner>,
    id: u64,
    job: Box<Job>,
) -> std::result::Result<(), Box<Job>> {
    let map = pending().lock();
    match map.get(&id) {
        Some(Pending {
            tx,
            pool: Some(waiting),
        }) if std::ptr::eq(waiting.as_ptr(), Arc::as_ptr(pool)) => {
            tx.send(Msg::Nested(job)).map_err(|e| match e.0 {
                Msg::Nested(job) => job,
                Msg::Reply(..) => unreachable!(),
            })
        }
        _ => Err(job),
    }
}

// ---------------------------------------------------------------------------------------------
// NIFs (Snakepit.Native): decode, delegate, encode.
// ---------------------------------------------------------------------------------------------

/// `Snakepit.Functions` says where calls go.
#[rustler::nif]
fn set_function_dispatcher(pid: LocalPid) -> rustler::Atom {
    *dispatcher().lock() = Some(pid);
    atoms::ok()
}

/// The reply of call `id`: `:ok`, or `:gone` when nobody waits for it any more.
#[rustler::nif]
fn function_reply(id: u64, term: Term<'_>) -> rustler::Atom {
    if reply(id, term) {
        atoms::ok()
    } else {
        cb_atoms::gone()
    }
}

/// Like `submit` (`window` 0: a call), for a job of the chain of call `chain`: run by the pool
/// thread that waits for that call when it is one of `pool`'s, else queued as usual.
#[rustler::nif]
fn submit_nested<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolRef>,
    chain: u64,
    reference: Term<'a>,
    command: Term<'a>,
    arguments: Term<'a>,
    window: u64,
) -> Result<ResourceArc<JobCtl>> {
    let inner = &pool.0;
    let stream = (window > 0).then_some(window);
    let (ctl, job) = crate::nif::new_job(env, inner, reference, command, arguments, stream);
    match submit_to_chain(inner, chain, job) {
        Ok(()) => Ok(ctl),
        Err(job) => crate::nif::queue(env, inner, ctl, job),
    }
}
