//! What each pool thread does: take jobs from the pool's queue, run them, reply.
//!
//! Scheduling (docs/architecture.md, "What shaped the pool"): each thread attaches to Python once. A thread that
//! finds the queue empty spins briefly (a bounded number of threads at a time), then detaches
//! and parks. `ready` counts the threads that will look at the queue soon without being woken
//! (spinners, and on GIL builds threads waiting for the GIL); a submit wakes a parked thread only
//! when nobody is ready, and a thread that takes a job while more are queued and nobody is
//! ready wakes one more. That keeps wake-ups (the expensive part of a call) rare under load while
//! a job that blocks in C (NumPy, sleep) never strands the queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::TryRecvError;
use pyo3::ffi;
use pyo3::prelude::*;
use rustler::{Encoder, OwnedEnv};

use crate::aio;
use crate::atoms;
use crate::callback;
use crate::convert;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::job::{Job, JobCtl};
use crate::mailer;
use crate::pool::PoolInner;
use crate::runtime;
use crate::slot::{Running, ThreadSlot};
use crate::worker::{Reason, Worker, WorkerSlot};

/// The body of pool thread `index` (`pool::ThreadMain`): signals `started` once it is ready,
/// serves jobs until the pool stops.
pub fn thread_main(pool: Arc<PoolInner>, index: usize, started: crossbeam_channel::Sender<()>) {
    // Counted (gil_gate.rs) for as long as it lives, except while parked.
    crate::gil_gate::attach(|py| {
        serve(py, &pool, index, started);
        // The last thread of its worker to leave after `stop` returned cleans the worker up
        // (`stop` does it for the workers whose threads all left before).
        let w = pool.slots[index].worker;
        if pool.live_threads[w].fetch_sub(1, Ordering::SeqCst) == 1
            && pool.stop_done.load(Ordering::SeqCst)
        {
            pool.cleanup_worker(py, w);
        }
    });
}

/// Serves jobs on pool thread `index` (attached: to the main interpreter, or in the
/// :subinterpreter profile to its worker's interpreter) until the pool stops.
pub(crate) fn serve(
    py: Python<'_>,
    pool: &Arc<PoolInner>,
    index: usize,
    started: crossbeam_channel::Sender<()>,
) {
    let slot = Arc::clone(&pool.slots[index]);
    slot.ident.store(
        unsafe { ffi::PyThread_get_thread_ident() } as u64,
        Ordering::SeqCst,
    );
    slot.tstate.store(
        unsafe { ffi::PyThreadState_Get() } as usize,
        Ordering::SeqCst,
    );
    dispatch::call_runtime(py, "set_thread_name", (&slot.name, &pool.config.name)).ok();
    interrupt::register_thread(&slot);
    crate::refs::set_thread_pool(&pool.config.name);
    callback::register_thread(pool, &slot, index);
    drop(started);
    let worker_slot = &pool.workers[slot.worker];
    pool.idle.ready_begin();
    loop {
        if pool.shutdown.load(Ordering::Relaxed) {
            pool.idle.ready_done();
            break;
        }
        let job = match pool.rx.try_recv() {
            Ok(job) => Some(job),
            Err(TryRecvError::Empty) => spin(py, pool),
            Err(TryRecvError::Disconnected) => None,
        };
        let job = match job {
            Some(job) => {
                pool.idle.ready_done();
                Some(job)
            }
            None => pool.idle.leave_ready(|| pool.rx.try_recv().ok()),
        };
        match job {
            Some(job) => {
                pool.idle.took_job(!pool.rx.is_empty());
                // run_job counts this thread ready again before it replies.
                let worker = worker_slot.get();
                run_job(py, pool, &worker, &slot, index, *job);
                drop(worker);
                if let Some(reason) = worker_slot.served_one(&pool.policy) {
                    recycle(py, pool, worker_slot, reason);
                }
            }
            None => py.detach(|| {
                let _parked = crate::gil_gate::parked();
                pool.idle
                    .park(|| !pool.rx.is_empty() || pool.shutdown.load(Ordering::SeqCst));
                // Until it holds the GIL again this thread will look at the queue soon.
                pool.idle.ready_begin();
            }),
        }
    }
    // Attached: an interrupter holding the GIL sees either this or a live thread state.
    slot.tstate.store(0, Ordering::SeqCst);
}

/// Spins for a job for a short while if fewer than `max_spinners` threads already do.
/// On GIL builds the spinner keeps the GIL (handing it over costs more than the spin); on
/// free-threaded builds it detaches so it never holds up a stop-the-world pause.
fn spin(py: Python<'_>, pool: &PoolInner) -> Option<Box<Job>> {
    // While every core is taken a spin holds up the caller's reply (contention.rs), unless the
    // queue keeps being fed while it spins (many callers): Idle::spin_pays decides.
    let busy = !crate::contention::spin_allowed(crate::contention::cores());
    if busy && !pool.idle.spin_pays() {
        return None;
    }
    let spin_loop = || {
        pool.idle.spin_for(
            || pool.rx.try_recv().ok(),
            || pool.shutdown.load(Ordering::Relaxed),
        )
    };
    let found = if runtime::FREE_THREADED {
        py.detach(spin_loop)
    } else {
        spin_loop()
    };
    if busy {
        pool.idle.spin_outcome(found.is_some());
    }
    found
}

/// Replaces worker `slot`'s instance after `reason`, and tells the pool's process.
fn recycle(py: Python<'_>, pool: &PoolInner, slot: &WorkerSlot, reason: Reason) {
    let outcome = slot.recycle(
        py,
        |py| pool.config.create_worker(py, slot.index),
        dispatch::cleanup,
    );
    let reason = match reason {
        Reason::MaxRequests => atoms::max_requests(),
        Reason::Ttl => atoms::ttl(),
    };
    let env = OwnedEnv::new();
    let message = env.run(|e| {
        let term = match &outcome {
            Ok(served) => (atoms::snakepit_recycled(), slot.index, reason, *served).encode(e),
            Err(err) => (atoms::snakepit_recycle_failed(), slot.index, reason, err).encode(e),
        };
        env.save(term)
    });
    mailer::post(mailer::Mail::Term {
        env,
        to: pool.owner,
        term: message,
    });
}

/// Runs one job on this thread (also a nested job of an `elixir.call` chain: callback.rs).
pub(crate) fn run_job(
    py: Python<'_>,
    pool: &PoolInner,
    worker: &Arc<Worker>,
    slot: &ThreadSlot,
    index: usize,
    job: Job,
) {
    if !job.ctl.start(index) {
        // Cancelled while queued (already counted); the caller is gone or timed out.
        pool.idle.ready_begin();
        JobCtl::demonitor(&job.ctl);
        if job.stream {
            job.end_stream(atoms::closed());
        }
        return;
    }
    *slot.run.lock() = Running {
        job: job.ctl.id,
        ..Running::default()
    };
    pool.counters.active.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let _chain = callback::enter(&job);

    if job.stream {
        run_stream(py, pool, worker, slot, job, t0);
        return;
    }

    let mut coroutine = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job.env.run(|env| {
            let command = job.command.load(env);
            let args = job.args.load(env);
            let obj = dispatch::invoke(py, worker, command, args)?;
            if aio::is_coroutine(&obj) {
                // Awaited on the worker's event loop (aio.rs), which replies.
                coroutine = Some(obj);
                return Ok(job.env.save(atoms::nil().encode(env)));
            }
            dispatch::result_term(py, env, command, &obj).map(|t| job.env.save(t))
        })
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::Worker(format!(
            "internal error in pool thread: {what}"
        )))
    });

    let run = job_done(pool, slot, t0);
    if run.armed || run.async_exc {
        interrupt::after_job(py, slot, &run);
    }
    if let Some(coro) = coroutine {
        drop(_chain);
        aio::hand_off(py, Arc::clone(worker), job, coro);
        return;
    }
    let result = if run.stopped {
        result.map_err(|_| pool.stopped_error())
    } else {
        result
    };

    if job.ctl.finish() {
        if result.is_ok() {
            pool.counters.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            pool.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        job.reply(result);
    } else {
        cancelled_while_running(pool, &job);
    }
}

/// Bookkeeping for a job cancelled while it ran (its interruption is over: see
/// `interrupt::after_job`): count it, drop the caller monitor.
fn cancelled_while_running(pool: &PoolInner, job: &Job) {
    pool.counters.cancelled.fetch_add(1, Ordering::Relaxed);
    JobCtl::demonitor(&job.ctl);
}

/// Once the Python work of a job is over: the thread is free (ready again before it replies,
/// so the caller's next call does not wake another thread), and its counters move. Returns
/// what the interrupter did to the job; call `interrupt::after_job` if it armed or set anything.
fn job_done(pool: &PoolInner, slot: &ThreadSlot, t0: Instant) -> Running {
    let run = std::mem::take(&mut *slot.run.lock());
    pool.idle.ready_begin();
    slot.busy_ns
        .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    slot.requests.fetch_add(1, Ordering::Relaxed);
    pool.counters.active.fetch_sub(1, Ordering::Relaxed);
    run
}

/// Runs a stream job: each item of the iterator the command returns is sent as
/// `{ref, {:chunk, term}}` when the consumer has demand; the end is `{ref, :done}`, a failure
/// `{ref, {:error, map}}`, and a cancellation (consumer halted, timed out or died) closes the
/// generator and answers `{ref, :closed}`.
fn run_stream(
    py: Python<'_>,
    pool: &PoolInner,
    worker: &Worker,
    slot: &ThreadSlot,
    job: Job,
    t0: Instant,
) {
    let iterator = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job.env.run(|env| {
            let command = job.command.load(env);
            let args = job.args.load(env);
            dispatch::invoke(py, worker, command, args).and_then(|obj| {
                let obj = aio::stream_source(py, worker, obj).map_err(|e| Error::from_py(py, e))?;
                dispatch::stream_iterator(py, command, obj)
            })
        })
    }))
    .unwrap_or_else(|_| Err(Error::Worker("internal error in pool thread".into())));

    let mut outcome: Result<()> = Ok(());
    let mut cancelled = false;
    if let Ok(iterator) = &iterator {
        let mut chunk_env = OwnedEnv::new();
        loop {
            // While it waits for demand the thread is in Rust: a cancellation then needs no
            // exception (the wait sees it), and one must not land in the generator's `finally`
            // when it is closed below. Only the generator's own code is interruptible. A stop
            // ends the wait too.
            slot.run.lock().waiting = true;
            let credit = py.detach(|| job.ctl.take_credit(|| slot.run.lock().stopped));
            slot.run.lock().waiting = false;
            if !credit {
                if job.ctl.is_cancelled() {
                    cancelled = true;
                } else {
                    outcome = Err(pool.stopped_error());
                }
                break;
            }
            let item = match iterator.call_method0("__next__") {
                Ok(item) => item,
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => break,
                Err(e) => {
                    outcome = Err(Error::from_py(py, e));
                    break;
                }
            };
            let mut failure = None;
            job.env.run(|jenv| {
                let reference = job.reference.load(jenv);
                let _ = chunk_env.send_and_clear(&job.caller, |cenv| {
                    match convert::py_to_term(cenv, &item) {
                        Ok(t) => {
                            (reference.in_env(cenv), (atoms::chunk(), t).encode(cenv)).encode(cenv)
                        }
                        Err(e) => {
                            failure = Some(e);
                            atoms::nil().encode(cenv)
                        }
                    }
                });
            });
            if let Some(e) = failure {
                outcome = Err(e);
                break;
            }
        }
        // No cancellation may be raised any more, not in the finally blocks `close` runs.
        let run = std::mem::take(&mut *slot.run.lock());
        if run.armed || run.async_exc {
            interrupt::after_job(py, slot, &run);
        }
        if run.stopped {
            outcome = outcome.map_err(|_| pool.stopped_error());
        }
        if (cancelled || outcome.is_err()) && iterator.hasattr("close").unwrap_or(false) {
            let _ = iterator.call_method0("close");
        }
    }
    let outcome = iterator.and(outcome);

    job_done(pool, slot, t0);

    if !cancelled && job.ctl.finish() {
        match outcome {
            Ok(()) => {
                pool.counters.completed.fetch_add(1, Ordering::Relaxed);
                JobCtl::demonitor(&job.ctl);
                job.end_stream(atoms::done());
            }
            Err(e) => {
                pool.counters.failed.fetch_add(1, Ordering::Relaxed);
                job.reply(Err(e));
            }
        }
    } else {
        cancelled_while_running(pool, &job);
        job.end_stream(atoms::closed());
    }
}
