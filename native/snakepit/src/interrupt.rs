//! Interrupting running jobs: raising `snakepit_bridge.Cancelled` in a pool thread when its
//! caller timed out or died, or when the pool stops.
//!
//! One thread per VM (the interrupter) delivers: it needs to attach to Python, which a
//! scheduler thread (where cancel and the monitor's `down` run) must not do. A request names
//! the job by its `JobCtl::id`; the interrupter acts only while the slot still runs that job
//! (checked under `ThreadSlot::run`), so a late request never reaches the thread's next job.
//!
//! Where the exception is raised matters. `PyThreadState_SetAsyncExc` raises it at the
//! thread's next eval-breaker check, and on CPython 3.13 that check often sits on an
//! instruction its code object's exception table wrongly leaves outside the enclosing `try`
//! (the backward jump of a `while cond:` loop that ends a `try` body): the exception then
//! skips the frame's `except`/`finally` blocks and `with` exits. So on CPython >= 3.12 the
//! interrupter marks the cancellation pending and has `snakepit_bridge/_cancel.py` raise it
//! from a `sys.monitoring` callback in the target thread, where CPython would check too (after
//! a call, on entry, at a loop's start rather than its backward jump) and with the handler of
//! that check (that module explains the details). The callback takes the
//! pending flag through `take_cancel` (once: the exception is raised at most once). A thread
//! that runs no Python frame when asked, or none of its armed frames for `FALLBACK_AFTER`
//! (a C call that calls back into other functions), gets `PyThreadState_SetAsyncExc`, as do
//! all threads on CPython < 3.12 and with `SNAKEPIT_SAFE_POINT_CANCEL=0` in the environment.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyCFunction;

use crate::slot::{Running, ThreadSlot};

/// How long a cancellation waits to be raised at a safe instruction before it falls back to
/// `PyThreadState_SetAsyncExc`.
const FALLBACK_AFTER: Duration = Duration::from_millis(500);

type Request = (Arc<ThreadSlot>, u64);

thread_local! {
    /// The slot of the pool thread this is (for `take_cancel`).
    static SLOT: RefCell<Option<Arc<ThreadSlot>>> = const { RefCell::new(None) };
}

/// Called by each pool thread when it starts.
pub fn register_thread(slot: &Arc<ThreadSlot>) {
    SLOT.with(|s| *s.borrow_mut() = Some(Arc::clone(slot)));
}

/// Asks the interrupter to raise `Cancelled` in `slot`'s thread if it still runs `job`.
pub fn request(slot: &Arc<ThreadSlot>, job: u64) {
    interrupter().send((Arc::clone(slot), job)).ok();
}

/// After a job that may have been interrupted (`run` as it was when the job ended, with
/// `ThreadSlot::run` already reset): no cancellation of it may be raised any more.
pub fn after_job(py: Python<'_>, slot: &ThreadSlot, run: &Running) {
    if run.armed {
        disarm(py, slot.ident.load(Ordering::SeqCst));
    }
    if run.async_exc {
        clear_async_exc(slot);
    }
}

/// `_cancel.take()` for the safe-point callback: whether the calling thread has a cancellation
/// to raise now (true once per cancellation).
#[pyfunction]
fn take_cancel() -> bool {
    SLOT.with(|s| {
        s.borrow().as_ref().is_some_and(|slot| {
            let mut run = slot.run.lock();
            if run.job != 0 && run.pending && !run.waiting {
                run.pending = false;
                run.delivered = true;
                true
            } else {
                false
            }
        })
    })
}

fn interrupter() -> &'static Sender<Request> {
    static TX: OnceLock<Sender<Request>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        std::thread::Builder::new()
            .name("snakepit-intr".into())
            .spawn(move || run_interrupter(rx))
            .expect("cannot start the snakepit interrupter thread");
        tx
    })
}

fn run_interrupter(rx: Receiver<Request>) {
    // The `_cancel` module once installed, None where safe points are unavailable.
    let mut safe_points: Option<Option<Py<PyModule>>> = None;
    // Armed cancellations, with the time they fall back to an async exception.
    let mut armed: Vec<(Instant, Arc<ThreadSlot>, u64)> = Vec::new();
    loop {
        let received = match armed.iter().map(|a| a.0).min() {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok((slot, job)) => {
                test_delay();
                crate::gil_gate::attach(|py| {
                    let module = safe_points.get_or_insert_with(|| install(py));
                    if let Some(at) = deliver(py, module.as_ref(), &slot, job) {
                        armed.push((at, slot, job));
                    }
                });
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if armed.iter().any(|a| a.0 <= now) {
            let (due, rest): (Vec<_>, Vec<_>) = armed.drain(..).partition(|a| a.0 <= now);
            armed = rest;
            crate::gil_gate::attach(|py| {
                for (_, slot, job) in due {
                    fall_back(py, &slot, job);
                }
            });
        }
    }
}

/// Installs the safe-point callback; None on CPython < 3.12 (no `sys.monitoring`) or when it
/// cannot be installed.
fn install(py: Python<'_>) -> Option<Py<PyModule>> {
    if std::env::var("SNAKEPIT_SAFE_POINT_CANCEL").as_deref() == Ok("0") {
        return None;
    }
    let module = py.import("snakepit_bridge._cancel").ok()?;
    let take = pyo3::wrap_pyfunction!(take_cancel, py).ok()?;
    let installed = module
        .call_method1("install", (take,))
        .and_then(|r| r.extract::<bool>())
        .unwrap_or(false);
    installed.then(|| module.unbind())
}

/// Starts the delivery of a cancellation of `job`; the time of its fallback when it was armed.
fn deliver(
    py: Python<'_>,
    module: Option<&Py<PyModule>>,
    slot: &Arc<ThreadSlot>,
    job: u64,
) -> Option<Instant> {
    let ident = slot.ident.load(Ordering::SeqCst);
    let exc = cancelled_type(py);
    {
        let mut run = slot.run.lock();
        if run.job != job || run.waiting || run.pending || run.delivered || run.async_exc {
            return None; // over, under way, or seen by the stream's wait for demand
        }
        if module.is_none() {
            set_async_exc(ident, &exc);
            run.async_exc = true;
            return None;
        }
        run.pending = true;
        run.armed = true;
    }
    // Arm outside the slot lock: Python code runs (it may release the GIL, or stop the world
    // on a free-threaded build) while the pool thread may wait for that lock.
    let still_pending = {
        let slot = Arc::clone(slot);
        PyCFunction::new_closure(py, None, None, move |_args, _kwargs| -> bool {
            let run = slot.run.lock();
            run.job == job && run.pending
        })
    };
    let frame = thread_frame(py, slot);
    let armed = module
        .and_then(|m| {
            still_pending
                .and_then(|f| m.bind(py).call_method1("arm", (ident, f, frame)))
                .and_then(|r| r.extract::<bool>())
                .ok()
        })
        .unwrap_or(false);
    if armed {
        return Some(Instant::now() + FALLBACK_AFTER);
    }
    // No Python frame to arm: the thread is in Rust, before or after the job's Python code.
    let mut run = slot.run.lock();
    if run.job == job && run.pending {
        run.pending = false;
        set_async_exc(ident, &exc);
        run.async_exc = true;
    }
    None
}

/// The current frame of `slot`'s thread (None: it runs no Python code).
///
/// Not `sys._current_frames()`: on GIL builds it walks the threads of every interpreter in the
/// process and makes frame objects for their frames with this interpreter's allocator, without
/// their interpreter's GIL, which corrupts the heap of a :subinterpreter worker running then
/// (docs/architecture.md, "Subinterpreter workers"). The slot's thread state stays valid while
/// this thread holds the GIL: the pool thread clears `tstate` while attached, before it lets go
/// of it (thread.rs `serve`); nothing here releases the GIL between the load and the use.
#[cfg(not(Py_GIL_DISABLED))]
fn thread_frame<'py>(py: Python<'py>, slot: &ThreadSlot) -> Option<Bound<'py, PyAny>> {
    let tstate = slot.tstate.load(Ordering::SeqCst) as *mut ffi::PyThreadState;
    if tstate.is_null() {
        return None;
    }
    unsafe {
        let frame = ffi::PyThreadState_GetFrame(tstate);
        Bound::from_owned_ptr_or_opt(py, frame.cast::<ffi::PyObject>())
    }
}

/// Free-threaded builds have no GIL to keep the thread state alive: `sys._current_frames()`
/// stops the world while it looks (and has no :subinterpreter workers to harm).
#[cfg(Py_GIL_DISABLED)]
fn thread_frame<'py>(py: Python<'py>, slot: &ThreadSlot) -> Option<Bound<'py, PyAny>> {
    let ident = slot.ident.load(Ordering::SeqCst);
    py.import("sys")
        .and_then(|sys| sys.getattr("_current_frames"))
        .and_then(|f| f.call0())
        .and_then(|frames| frames.get_item(ident))
        .ok()
}

/// The armed cancellation of `job` was not raised in time: raise it at the next check.
fn fall_back(py: Python<'_>, slot: &ThreadSlot, job: u64) {
    let ident = slot.ident.load(Ordering::SeqCst);
    let exc = cancelled_type(py);
    {
        let mut run = slot.run.lock();
        if run.job != job {
            return; // the job ended, and after_job disarmed
        }
        if run.pending && !run.waiting {
            run.pending = false;
            set_async_exc(ident, &exc);
            run.async_exc = true;
        }
    }
    disarm(py, ident);
}

fn disarm(py: Python<'_>, ident: u64) {
    if let Ok(module) = py.import("snakepit_bridge._cancel") {
        if let Err(e) = module.call_method1("disarm", (ident,)) {
            e.print(py);
        }
    }
}

/// `snakepit_bridge.Cancelled`. Fetched before taking the slot lock: an import may run Python
/// code, which may hand the GIL to a pool thread that then waits for that lock.
fn cancelled_type(py: Python<'_>) -> Bound<'_, PyAny> {
    py.import("snakepit_bridge.errors")
        .and_then(|m| m.getattr("Cancelled"))
        .unwrap_or_else(|_| py.get_type::<pyo3::exceptions::PyTimeoutError>().into_any())
}

/// Sets `exc` as the async exception of thread `ident` (a C call that runs no Python code). Call
/// under the slot lock, having checked that it runs the job.
fn set_async_exc(ident: u64, exc: &Bound<'_, PyAny>) {
    unsafe {
        ffi::PyThreadState_SetAsyncExc(ident as std::os::raw::c_long, exc.as_ptr());
    }
}

/// Drops an async exception set for this thread but not raised yet. Call with the slot's job
/// reset, so that no new one can be set.
fn clear_async_exc(slot: &ThreadSlot) {
    unsafe {
        ffi::PyThreadState_SetAsyncExc(
            slot.ident.load(Ordering::SeqCst) as std::os::raw::c_long,
            std::ptr::null_mut(),
        );
    }
}

/// `SNAKEPIT_TEST_INTERRUPT_DELAY_US`: the interrupter waits that long before each delivery,
/// widening the race windows the cancellation tests look for (test suite only).
fn test_delay() {
    if let Some(us) = std::env::var("SNAKEPIT_TEST_INTERRUPT_DELAY_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_micros(us));
    }
}
