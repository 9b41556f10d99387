//! A job: one call of an adapter command, from submit to its one reply.
//!
//! Every job gets exactly one reply `{ref, {:ok, term} | {:error, map}}`, unless its caller
//! cancelled it (timeout) or died first. The state machine makes that race-free:
//! `QUEUED -> RUNNING -> DONE`, and `QUEUED | RUNNING -> CANCELLED`. Only the thread that wins
//! `RUNNING -> DONE` sends a reply.
//!
//! The state machine, the job ids and a stream's credits need no BEAM: they are compiled (and
//! unit-tested) without the `nif` feature. The caller monitor, the resource and the queued
//! `Job` with its terms are behind it (module `beam` below).

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Weak;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[cfg(feature = "nif")]
pub use beam::Job;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 3;

/// How often a stream waiting for demand asks whether its pool stopped.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What a job needs from the pool it was submitted to (`PoolInner` in pool.rs implements it;
/// a trait, so that this module does not depend on the pool).
pub trait JobHost: Send + Sync {
    /// Raises the cancellation in pool thread `thread` if it still runs job `job` (by id).
    fn interrupt(&self, thread: usize, job: u64);
    /// A queued job was cancelled (it counts in the pool's stats).
    fn cancelled_queued(&self);
}

/// The part of a job Elixir holds (as a resource) to cancel it; also the target of the
/// caller monitor.
pub struct JobCtl {
    /// Never reused (unlike the address of a freed job): names the job to the interrupter,
    /// which may run after the job ended and the thread took another.
    pub id: u64,
    state: AtomicU8,
    /// 1 + index of the pool thread running the job, 0 while queued.
    running_on: AtomicUsize,
    host: Weak<dyn JobHost>,
    /// Stream jobs: how many more chunks the consumer wants (demand-driven flow).
    credits: Mutex<u64>,
    credit_cv: Condvar,
    /// The monitor of the caller (see `beam`).
    #[cfg(feature = "nif")]
    monitor: Mutex<Option<rustler::Monitor>>,
}

/// What `cancel` found.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job will never reply.
    Cancelled,
    /// The reply has been (or is being) sent: receive it.
    Done,
}

impl JobCtl {
    pub fn new<H: JobHost + 'static>(host: Weak<H>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        JobCtl {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: AtomicU8::new(QUEUED),
            running_on: AtomicUsize::new(0),
            host,
            credits: Mutex::new(0),
            credit_cv: Condvar::new(),
            #[cfg(feature = "nif")]
            monitor: Mutex::new(None),
        }
    }

    /// Stream jobs: the consumer wants `n` more chunks.
    pub fn grant(&self, n: u64) {
        *self.credits.lock() += n;
        self.credit_cv.notify_all();
    }

    /// Stream jobs: waits for one unit of demand; false when the job was cancelled or
    /// `stopped()` (checked every 50 ms) says the pool stopped.
    pub fn take_credit(&self, stopped: impl Fn() -> bool) -> bool {
        self.take_credit_polling(stopped, STOP_POLL)
    }

    /// `take_credit`, asking `stopped()` every `poll`. A grant or a cancellation wakes the
    /// wait at once.
    fn take_credit_polling(&self, stopped: impl Fn() -> bool, poll: Duration) -> bool {
        let mut credits = self.credits.lock();
        loop {
            if self.is_cancelled() {
                return false;
            }
            if *credits > 0 {
                *credits -= 1;
                return true;
            }
            if stopped() {
                return false;
            }
            self.credit_cv.wait_for(&mut credits, poll);
        }
    }

    /// QUEUED -> RUNNING on `thread`; false when the job was cancelled while queued.
    pub fn start(&self, thread: usize) -> bool {
        self.running_on.store(thread + 1, Ordering::SeqCst);
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// RUNNING -> DONE; false when the job was cancelled while it ran.
    pub fn finish(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Marks a queued job done without running it (pool shutdown answers it with an error).
    pub fn abandon(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, DONE, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::SeqCst) == CANCELLED
    }

    /// Cancels the job: a queued job is dropped when a thread dequeues it; a running one gets
    /// an asynchronous `snakepit_bridge.Cancelled` exception raised in its thread.
    pub fn cancel(&self) -> CancelOutcome {
        let mut current = self.state.load(Ordering::SeqCst);
        loop {
            match current {
                DONE => return CancelOutcome::Done,
                CANCELLED => return CancelOutcome::Cancelled,
                _ => {}
            }
            match self.state.compare_exchange(
                current,
                CANCELLED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(previous) => {
                    // A stream waiting for demand must see the cancellation.
                    drop(self.credits.lock());
                    self.credit_cv.notify_all();
                    if previous == RUNNING {
                        if let Some(host) = self.host.upgrade() {
                            let thread = self.running_on.load(Ordering::SeqCst);
                            if thread > 0 {
                                host.interrupt(thread - 1, self.id);
                            }
                        }
                    } else if let Some(host) = self.host.upgrade() {
                        host.cancelled_queued();
                    }
                    return CancelOutcome::Cancelled;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// The BEAM side of a job: the caller monitor, the resource, the queued job.
#[cfg(feature = "nif")]
mod beam {
    use rustler::env::SavedTerm;
    use rustler::{Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc};

    use super::JobCtl;

    #[rustler::resource_impl]
    impl Resource for JobCtl {
        fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
            // The caller died: nobody wants the answer.
            self.monitor.lock().take();
            self.cancel();
        }
    }

    impl JobCtl {
        pub fn set_monitor(&self, monitor: Option<Monitor>) {
            *self.monitor.lock() = monitor;
        }

        pub fn take_monitor(&self) -> Option<Monitor> {
            self.monitor.lock().take()
        }

        /// Drops the caller monitor (from a non-scheduler thread).
        pub fn demonitor(this: &ResourceArc<JobCtl>) {
            if let Some(mon) = this.take_monitor() {
                this.demonitor(None, &mon);
            }
        }
    }

    /// The whole job as it travels through the queue.
    pub struct Job {
        pub ctl: ResourceArc<JobCtl>,
        pub caller: LocalPid,
        pub env: OwnedEnv,
        pub reference: SavedTerm,
        pub command: SavedTerm,
        pub args: SavedTerm,
        /// A stream job: the command returns an iterator whose items are sent one by one.
        pub stream: bool,
    }
}
