//! One pool thread's bookkeeping: read by the thread itself (thread.rs), the interrupter
//! (interrupt.rs), the pool's stop (pool.rs) and stats (stats.rs).

use std::sync::atomic::{AtomicU64, AtomicUsize};

use parking_lot::Mutex;

/// Per-thread bookkeeping, readable by stats and by the interrupter.
pub struct ThreadSlot {
    pub name: String,
    pub worker: usize,
    /// `threading.get_ident()` of the thread.
    pub ident: AtomicU64,
    /// The thread's `PyThreadState*` while it serves jobs, 0 before and after: set and cleared
    /// by the thread while attached, so a thread holding the GIL of the same interpreter may
    /// read its frame (interrupt.rs `thread_frame`).
    pub tstate: AtomicUsize,
    /// The job being run and the state of its interruption (see interrupt.rs).
    pub run: Mutex<Running>,
    pub requests: AtomicU64,
    pub busy_ns: AtomicU64,
}

impl ThreadSlot {
    pub fn new(name: String, worker: usize) -> Self {
        ThreadSlot {
            name,
            worker,
            ident: AtomicU64::new(0),
            tstate: AtomicUsize::new(0),
            run: Mutex::new(Running::default()),
            requests: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
        }
    }
}

/// What a pool thread runs, as the interrupter sees it (`ThreadSlot::run`).
#[derive(Default, Clone, Copy, Debug)]
pub struct Running {
    /// `JobCtl::id` of the job being run, 0 when idle.
    pub job: u64,
    /// A cancellation waits to be raised by the safe-point callback.
    pub pending: bool,
    /// Safe-point delivery may be armed for this thread: disarm it when the job ends.
    pub armed: bool,
    /// An async exception was set for this thread: clear it when the job ends.
    pub async_exc: bool,
    /// The safe-point callback raised the cancellation in the job's Python code.
    pub delivered: bool,
    /// The pool's stop interrupted the job: it answers with a `:pool` error.
    pub stopped: bool,
    /// A stream job waiting for demand: its cancellation needs no exception (the wait sees it).
    pub waiting: bool,
}
