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

/// The BEAM side of a job: the caller monitor, the resource, the queued job and its replies.
#[cfg(feature = "nif")]
mod beam {
    use rustler::env::SavedTerm;
    use rustler::{Atom, Encoder, Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc};

    use super::JobCtl;
    use crate::error::Result;

    // rustler returns a NIF's value from inside `catch_unwind`, so a NIF that returns a
    // `ResourceArc<JobCtl>` needs it; encoding the resource reads none of its state.
    impl std::panic::RefUnwindSafe for JobCtl {}

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

    impl Job {
        /// Sends `{ref, {:ok, result}}` or `{ref, {:error, map}}` to the caller.
        pub fn reply(mut self, result: Result<SavedTerm>) {
            JobCtl::demonitor(&self.ctl);
            let reference = self.reference.clone();
            let caller = self.caller;
            let _ = self.env.send_and_clear(&caller, |env| {
                let body = result.as_ref().map(|saved| saved.load(env));
                (reference.load(env), body).encode(env)
            });
        }

        /// `{ref, :done}` or `{ref, :closed}` to a stream's consumer.
        pub fn end_stream(mut self, tag: Atom) {
            let reference = self.reference.clone();
            let caller = self.caller;
            let _ = self
                .env
                .send_and_clear(&caller, |env| (reference.load(env), tag).encode(env));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Instant;

    /// A host that records what jobs asked of it.
    #[derive(Default)]
    struct Host {
        interrupts: Mutex<Vec<(usize, u64)>>,
        cancelled_queued: AtomicUsize,
    }

    impl JobHost for Host {
        fn interrupt(&self, thread: usize, job: u64) {
            self.interrupts.lock().push((thread, job));
        }
        fn cancelled_queued(&self) {
            self.cancelled_queued.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn job_on(host: &Arc<Host>) -> JobCtl {
        JobCtl::new(Arc::downgrade(host))
    }

    fn orphan_job() -> JobCtl {
        JobCtl::new(Weak::<Host>::new())
    }

    /// Runs `f` on a thread; panics when it does not return within `limit`.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = crossbeam_channel::bounded(1);
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .expect("did not return in time (a lost wake-up)")
    }

    #[test]
    fn ids_are_distinct_and_increase() {
        let a = orphan_job();
        let b = orphan_job();
        assert!(b.id > a.id);
        let threads: Vec<_> = (0..4)
            .map(|_| thread::spawn(|| (0..1000).map(|_| orphan_job().id).collect::<Vec<_>>()))
            .collect();
        let ids: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "an id was given twice");
        assert!(sorted[0] > b.id);
    }

    #[test]
    fn queued_running_done() {
        let host = Arc::new(Host::default());
        let job = job_on(&host);
        assert!(job.start(3));
        assert!(!job.is_cancelled());
        assert!(job.finish());
        // Done is final: no second finish, no cancel, no abandon.
        assert!(!job.finish());
        assert_eq!(job.cancel(), CancelOutcome::Done);
        assert!(!job.abandon());
        assert!(host.interrupts.lock().is_empty());
        assert_eq!(host.cancelled_queued.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn cancelled_while_queued_never_runs() {
        let host = Arc::new(Host::default());
        let job = job_on(&host);
        assert_eq!(job.cancel(), CancelOutcome::Cancelled);
        assert!(job.is_cancelled());
        assert_eq!(host.cancelled_queued.load(Ordering::SeqCst), 1);
        assert!(!job.start(0), "a cancelled job must not start");
        assert!(!job.finish());
        assert!(!job.abandon());
        // A second cancel changes nothing and counts nothing.
        assert_eq!(job.cancel(), CancelOutcome::Cancelled);
        assert_eq!(host.cancelled_queued.load(Ordering::SeqCst), 1);
        assert!(host.interrupts.lock().is_empty());
    }

    #[test]
    fn cancelled_while_running_interrupts_its_thread() {
        let host = Arc::new(Host::default());
        let job = job_on(&host);
        assert!(job.start(5));
        assert_eq!(job.cancel(), CancelOutcome::Cancelled);
        assert_eq!(*host.interrupts.lock(), vec![(5, job.id)]);
        assert!(!job.finish(), "a cancelled job must not reply");
        assert_eq!(job.cancel(), CancelOutcome::Cancelled);
        assert_eq!(host.interrupts.lock().len(), 1, "interrupted twice");
        assert_eq!(host.cancelled_queued.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn abandoned_when_the_pool_stops() {
        let host = Arc::new(Host::default());
        let job = job_on(&host);
        assert!(job.abandon());
        assert!(!job.start(0));
        assert_eq!(job.cancel(), CancelOutcome::Done);
        assert_eq!(host.cancelled_queued.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn cancel_after_the_pool_is_gone() {
        let host = Arc::new(Host::default());
        let job = job_on(&host);
        assert!(job.start(0));
        drop(host);
        assert_eq!(job.cancel(), CancelOutcome::Cancelled);
        assert!(!job.finish());
    }

    /// A running job's cancel and finish race: exactly one wins. The caller gets the reply
    /// (cancel says Done) or never gets one (cancel says Cancelled, finish fails).
    #[test]
    fn cancel_races_finish() {
        let host = Arc::new(Host::default());
        let (mut cancelled, mut done) = (0, 0);
        for i in 0..2000 {
            let job = Arc::new(job_on(&host));
            assert!(job.start(i % 7));
            let barrier = Arc::new(Barrier::new(2));
            let finisher = {
                let (job, barrier) = (Arc::clone(&job), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    job.finish()
                })
            };
            barrier.wait();
            let outcome = job.cancel();
            let finished = finisher.join().unwrap();
            match outcome {
                CancelOutcome::Done => {
                    assert!(finished);
                    done += 1;
                }
                CancelOutcome::Cancelled => {
                    assert!(!finished);
                    cancelled += 1;
                }
            }
        }
        assert_eq!(host.interrupts.lock().len(), cancelled);
        assert_eq!(cancelled + done, 2000);
    }

    /// A queued job's cancel races a thread taking it (start) or the pool's stop (abandon):
    /// the job either runs (or is answered by the stop) or is counted cancelled, never both.
    #[test]
    fn cancel_races_start_and_abandon() {
        let host = Arc::new(Host::default());
        let (mut started, mut abandoned) = (0, 0);
        for i in 0..2000 {
            let job = Arc::new(job_on(&host));
            let barrier = Arc::new(Barrier::new(2));
            let taker = {
                let (job, barrier) = (Arc::clone(&job), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    if i % 2 == 0 {
                        job.start(0)
                    } else {
                        job.abandon()
                    }
                })
            };
            barrier.wait();
            let outcome = job.cancel();
            match (taker.join().unwrap(), i % 2 == 0) {
                // Started first: the cancel interrupts the running job.
                (true, true) => {
                    assert_eq!(outcome, CancelOutcome::Cancelled);
                    started += 1;
                }
                // Answered by the stop first: the caller receives that answer.
                (true, false) => {
                    assert_eq!(outcome, CancelOutcome::Done);
                    abandoned += 1;
                }
                // Cancelled first: never runs, never answered.
                (false, _) => assert_eq!(outcome, CancelOutcome::Cancelled),
            }
        }
        assert_eq!(host.interrupts.lock().len(), started);
        assert_eq!(
            host.cancelled_queued.load(Ordering::SeqCst),
            2000 - started - abandoned
        );
    }

    /// Many cancels of one running job: one interruption, all see Cancelled.
    #[test]
    fn concurrent_cancels_interrupt_once() {
        let host = Arc::new(Host::default());
        let job = Arc::new(job_on(&host));
        assert!(job.start(1));
        let barrier = Arc::new(Barrier::new(8));
        let cancellers: Vec<_> = (0..8)
            .map(|_| {
                let (job, barrier) = (Arc::clone(&job), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    job.cancel()
                })
            })
            .collect();
        let outcomes: Vec<CancelOutcome> =
            cancellers.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(outcomes.iter().all(|o| *o == CancelOutcome::Cancelled));
        assert_eq!(*host.interrupts.lock(), vec![(1, job.id)]);
    }

    #[test]
    fn credits_are_taken_one_by_one() {
        let job = orphan_job();
        job.grant(2);
        assert!(job.take_credit(|| false));
        assert!(job.take_credit(|| false));
        // No credit left and the pool stopped: the wait ends.
        assert!(!job.take_credit(|| true));
    }

    #[test]
    fn a_grant_wakes_a_waiting_stream() {
        let job = Arc::new(orphan_job());
        let waiter = Arc::clone(&job);
        let started = Instant::now();
        let (tx, rx) = crossbeam_channel::bounded(1);
        thread::spawn(move || {
            // A poll of a minute: only the grant's notification can end this wait in time.
            let _ = tx.send(waiter.take_credit_polling(|| false, Duration::from_secs(60)));
        });
        thread::sleep(Duration::from_millis(20));
        job.grant(1);
        let took = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the grant did not wake the stream");
        assert!(took);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// The cancel of a stream that waits for demand wakes it at once (it does not wait for the
    /// next stop poll), whenever the cancel lands: before, during or after the wait starts.
    #[test]
    fn a_cancel_wakes_a_stream_waiting_for_credit() {
        let host = Arc::new(Host::default());
        for i in 0..500 {
            let job = Arc::new(job_on(&host));
            assert!(job.start(0));
            let barrier = Arc::new(Barrier::new(2));
            let waiter = {
                let (job, barrier) = (Arc::clone(&job), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    job.take_credit_polling(|| false, Duration::from_secs(60))
                })
            };
            barrier.wait();
            if i % 3 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
            assert_eq!(job.cancel(), CancelOutcome::Cancelled);
            let took = within(Duration::from_secs(10), move || waiter.join().unwrap());
            assert!(!took, "a cancelled stream took a credit");
        }
    }

    /// A cancelled stream takes no credit even when some is left.
    #[test]
    fn a_cancelled_stream_takes_no_credit() {
        let job = orphan_job();
        job.grant(5);
        assert!(job.take_credit(|| false));
        job.cancel();
        assert!(!job.take_credit(|| false));
    }

    /// The pool's stop ends the wait through the poll.
    #[test]
    fn a_stop_ends_the_wait_for_credit() {
        let job = Arc::new(orphan_job());
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (job, stopped) = (Arc::clone(&job), Arc::clone(&stopped));
            thread::spawn(move || {
                job.take_credit_polling(|| stopped.load(Ordering::SeqCst), Duration::from_millis(5))
            })
        };
        thread::sleep(Duration::from_millis(20));
        stopped.store(true, Ordering::SeqCst);
        let took = within(Duration::from_secs(10), move || waiter.join().unwrap());
        assert!(!took);
    }
}
