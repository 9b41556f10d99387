//! `async def` commands and async generators (docs/architecture.md, "Async Python").
//!
//! A command that returns a coroutine is handed to its worker's event loop
//! (`snakepit_bridge/_async.py`: one loop thread per adapter instance) and the pool thread is
//! free at once: the reply is sent by the future's done callback, on the loop thread. So awaiting
//! commands hold no pool thread. A cancellation (timeout, caller death) reaches the job through
//! `PoolInner::interrupt` -> `cancel`, which cancels the future from the "snakepit-aio" thread
//! (it must attach to Python, which a scheduler thread must not): the coroutine sees
//! `asyncio.CancelledError` and its `finally` blocks run.
//!
//! An async generator given to `execute_stream` is driven step by step from the pool thread
//! that runs the stream (`_async.iterate`), with the same demand-driven flow as a generator.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple};

use crate::callback;
use crate::convert;
use crate::error::{Error, Result};
use crate::job::{Job, JobCtl};
use crate::pool::PoolInner;
use crate::worker::Worker;

/// The futures of the async jobs in flight, by `JobCtl::id`.
fn in_flight() -> &'static Mutex<HashMap<u64, Py<PyAny>>> {
    static MAP: OnceLock<Mutex<HashMap<u64, Py<PyAny>>>> = OnceLock::new();
    MAP.get_or_init(|| Mutex::new(HashMap::new()))
}

/// How many async jobs are in flight (inline.rs runs no call while their loop may run Python).
pub fn in_flight_count() -> usize {
    in_flight().lock().len()
}

/// Whether a command's result is a coroutine to await (a cheap type check: it runs on every
/// call's result).
#[inline]
pub fn is_coroutine(obj: &Bound<'_, PyAny>) -> bool {
    unsafe { ffi::PyCoro_CheckExact(obj.as_ptr()) != 0 }
}

/// Schedules `coro` on `worker`'s event loop; the job is answered when it completes. Until
/// then the job holds the instance, as a running call does (a recycle waits for it).
pub fn hand_off(py: Python<'_>, worker: Arc<Worker>, job: Job, coro: Bound<'_, PyAny>) {
    let ctl = job.ctl.clone();
    let id = ctl.id;
    let pool = callback::current_pool().map(|p| Arc::downgrade(&p));
    let held: Arc<Mutex<Option<Job>>> = Arc::new(Mutex::new(Some(job)));
    let held_cb = Arc::clone(&held);
    let pool_cb = pool.clone();
    let adapter = worker.adapter.clone_ref(py);
    let instance = Mutex::new(Some(worker));
    let scheduled = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<()> {
            let fut = args.get_item(0)?;
            in_flight().lock().remove(&id);
            if let Some(job) = held_cb.lock().take() {
                complete(args.py(), pool_cb.as_ref(), job, &fut);
            }
            drop(instance.lock().take());
            Ok(())
        },
    )
    .and_then(|done| {
        py.import("snakepit_bridge._async")?
            .getattr("schedule")?
            .call1((adapter.bind(py), &coro, done))
    });
    match scheduled {
        Ok(fut) => {
            in_flight().lock().insert(id, fut.clone().unbind());
            // Done already (the callback ran before the insert), or cancelled before it.
            if fut
                .call_method0("done")
                .and_then(|d| d.extract::<bool>())
                .unwrap_or(true)
            {
                in_flight().lock().remove(&id);
            } else if ctl.is_cancelled() {
                in_flight().lock().remove(&id);
                let _ = fut.call_method0("cancel");
            }
        }
        Err(e) => {
            let _ = coro.call_method0("close");
            if let Some(job) = held.lock().take() {
                finish(pool.as_ref(), job, Err(Error::from_py(py, e)));
            }
        }
    }
}

/// The coroutine of `job` is over (`fut` a `concurrent.futures.Future`).
fn complete(py: Python<'_>, pool: Option<&Weak<PoolInner>>, job: Job, fut: &Bound<'_, PyAny>) {
    let cancelled = fut
        .call_method0("cancelled")
        .and_then(|c| c.extract::<bool>())
        .unwrap_or(false);
    let result = if cancelled {
        Err(Error::Pool(
            "the worker's event loop stopped before the call finished".into(),
        ))
    } else {
        match fut.call_method0("result") {
            Ok(value) => job
                .env
                .run(|env| convert::py_to_term(env, &value).map(|t| job.env.save(t))),
            Err(e) => Err(Error::from_py(py, e)),
        }
    };
    finish(pool, job, result);
}

fn finish(pool: Option<&Weak<PoolInner>>, job: Job, result: Result<rustler::env::SavedTerm>) {
    let pool = pool.and_then(|p| p.upgrade());
    if job.ctl.finish() {
        if let Some(pool) = &pool {
            let counter = if result.is_ok() {
                &pool.counters.completed
            } else {
                &pool.counters.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        job.reply(result);
    } else {
        if let Some(pool) = &pool {
            pool.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        JobCtl::demonitor(&job.ctl);
    }
}

/// Cancels async job `job` if it is one in flight (called from `PoolInner::interrupt`, on any
/// thread). True when it was.
pub fn cancel(job: u64) -> bool {
    let fut = in_flight().lock().remove(&job);
    match fut {
        Some(fut) => {
            canceller().send(fut).ok();
            true
        }
        None => false,
    }
}

fn canceller() -> &'static Sender<Py<PyAny>> {
    static TX: OnceLock<Sender<Py<PyAny>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Py<PyAny>>();
        std::thread::Builder::new()
            .name("snakepit-aio".into())
            .spawn(move || {
                for fut in rx {
                    crate::gil_gate::attach(|py| {
                        if let Err(e) = fut.bind(py).call_method0("cancel") {
                            e.print(py);
                        }
                        drop(fut);
                    });
                }
            })
            .expect("cannot start the snakepit-aio thread");
        tx
    })
}

/// What `execute_stream` iterates: an async generator becomes a generator driven on the
/// worker's loop; anything else is returned as it is.
pub fn stream_source<'py>(
    py: Python<'py>,
    worker: &Worker,
    obj: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if unsafe { ffi::PyAsyncGen_CheckExact(obj.as_ptr()) } == 0 {
        return Ok(obj);
    }
    py.import("snakepit_bridge._async")?
        .getattr("iterate")?
        .call1((worker.adapter.bind(py), obj))
}
