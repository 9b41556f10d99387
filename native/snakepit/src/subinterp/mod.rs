//! The :subinterpreter profile (docs/architecture.md, "Subinterpreter workers"): each worker
//! is an isolated CPython interpreter with its own GIL (PEP 684, CPython >= 3.12), made with
//! `Py_NewInterpreterFromConfig`; its adapter instance lives there and its
//! `threads_per_worker` pool threads each hold a thread state of that interpreter for their
//! whole life. Everything else is the :thread profile's machinery (pool.rs queue and stop,
//! thread.rs `serve`, job.rs, slot.rs, stats.rs, worker.rs recycling).
//!
//! The rules that keep pyo3 sound here (the reasons are in docs/architecture.md):
//! - a pool thread's first thread state is its interpreter's, so `Python::attach` on it is
//!   `PyGILState_Ensure` finding that (current) thread state: a no-op that only gives pyo3 its
//!   token and attach count;
//! - no object of one interpreter is used in another: pids (a `#[pyclass]` of the main
//!   interpreter) do not cross (convert.rs), `tools/1` is converted once in the worker's
//!   interpreter, the adapter's objects are dropped there before it ends (`WorkerSlot::retire`);
//! - cancellation is delivered by this profile's own interrupter thread, which enters the
//!   target's interpreter (`PyThreadState_SetAsyncExc` only sees the current interpreter's
//!   threads) with raw `ffi` calls only.

use std::sync::Arc;

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
#[cfg(not(Py_3_12))]
use rustler::LocalPid;
use rustler::{Env, OwnedEnv, Term};

#[cfg(not(Py_3_12))]
use crate::error::Error;
use crate::error::Result;
#[cfg(not(Py_3_12))]
use crate::pool::PoolConfig;
use crate::slot::ThreadSlot;

#[cfg(Py_3_12)]
mod interp;
pub mod native;

#[cfg(Py_3_12)]
pub use interp::start;

/// A stand-in before CPython 3.12: `Snakepit.Config` refuses the profile there first.
#[cfg(not(Py_3_12))]
pub fn start(_config: PoolConfig, _owner: LocalPid) -> Result<Arc<crate::pool::PoolInner>> {
    Err(Error::Validation {
        message: format!(
            "worker_profile :subinterpreter needs CPython 3.12 or later (own GIL per \
             interpreter); Snakepit runs Python {}; use :thread or :process",
            crate::runtime::version_string()
        ),
        available: vec![],
    })
}

/// One worker's interpreter. `alive` is false once it ended: read-locked by whoever enters it
/// from outside its pool threads (the interrupter), write-locked to end it.
pub struct Interp {
    pub ptr: usize,
    pub alive: RwLock<bool>,
    /// Its first thread state (interp.rs `Made::initial`), deleted when it ends.
    pub initial: std::sync::atomic::AtomicUsize,
}

/// The interpreters of a :subinterpreter pool (`PoolInner::interps`).
pub struct Interps {
    pub list: Arc<Vec<Interp>>,
    interrupter: Mutex<Sender<(Arc<ThreadSlot>, u64)>>,
    /// `tools/1`'s answer, converted in worker 0's interpreter when it started.
    tools: Mutex<(OwnedEnv, rustler::env::SavedTerm)>,
}

impl Interps {
    /// Asks this pool's interrupter to raise `Cancelled` in `slot`'s thread if it still runs
    /// `job`.
    pub fn interrupt(&self, slot: &Arc<ThreadSlot>, job: u64) {
        let _ = self.interrupter.lock().send((Arc::clone(slot), job));
    }

    /// The adapter's tools, copied into `env`.
    pub fn tools<'a>(&self, env: Env<'a>) -> Result<Term<'a>> {
        let guard = self.tools.lock();
        let (owned, saved) = &*guard;
        Ok(owned.run(|e| saved.load(e).in_env(env)))
    }
}

/// The id of the interpreter the calling (attached) thread runs in: 0 for the main one.
///
/// The hook for objects that must not leave their interpreter: a `%Snakepit.Ref{}` (issue 15)
/// records it when made and is refused, with an error naming both workers, when it is used or
/// released on a thread whose id differs (docs/architecture.md, "Subinterpreter workers").
pub fn current_interpreter_id() -> i64 {
    unsafe { pyo3::ffi::PyInterpreterState_GetID(pyo3::ffi::PyInterpreterState_Get()) }
}
