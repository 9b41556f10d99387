//! How idle pool threads wait for work without costing the caller a wake-up per call.
//!
//! `ready` counts the threads that will look at the queue soon without being woken: a thread
//! counts itself ready from the moment its job's Python work is done (before it sends the
//! reply, so the caller's next submit finds it ready), while it spins (at most `max_spinners`
//! spin at once), and on its way back from a wake-up (on GIL builds it may wait for the GIL). A
//! submit wakes a parked thread only when nobody is ready; a thread that takes a job while more
//! are queued and nobody is ready wakes one more, so a job that blocks (NumPy, sleep) never
//! strands the queue behind it.
//!
//! Parked threads wait on a stack and are woken last-in, first-out: the thread that parked
//! most recently has the warmest caches, and a pool much wider than its load keeps serving from
//! a few threads instead of rotating through all of them. Registration and the final look at
//! the queue happen under the stack's lock, and submitters read `parked` after a SeqCst fence,
//! so either the submitter sees the parked thread or the thread sees the job: no wake-up is lost.

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

struct Waiter {
    thread: Thread,
    woken: AtomicBool,
}

thread_local! {
    static ME: RefCell<Option<Arc<Waiter>>> = const { RefCell::new(None) };
}

fn me() -> Arc<Waiter> {
    ME.with(|me| {
        me.borrow_mut()
            .get_or_insert_with(|| {
                Arc::new(Waiter {
                    thread: std::thread::current(),
                    woken: AtomicBool::new(false),
                })
            })
            .clone()
    })
}

pub struct Idle {
    ready: AtomicUsize,
    spinning: AtomicUsize,
    parked: AtomicUsize,
    stack: Mutex<Vec<Arc<Waiter>>>,
    /// Wake-ups issued and parks done, for stats.
    pub wakeups: AtomicUsize,
    pub parks: AtomicUsize,
    max_spinners: usize,
    spin: Duration,
    /// How well spinning paid off while the cores were all taken ([`Idle::spin_pays`]).
    score: AtomicUsize,
    probes: AtomicUsize,
}

/// A spin on a busy machine is kept up while the score is at least this (out of 16).
const SCORE_KEEP: usize = 4;
/// On a busy machine with a low score, one idle moment in this many still spins (a probe).
const PROBE_EVERY: usize = 32;

impl Idle {
    pub fn new(max_spinners: usize, spin: Duration) -> Self {
        Idle {
            ready: AtomicUsize::new(0),
            spinning: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            stack: Mutex::new(Vec::new()),
            wakeups: AtomicUsize::new(0),
            parks: AtomicUsize::new(0),
            max_spinners: max_spinners.max(1),
            spin,
            score: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
        }
    }

    /// Whether to spin although every core is taken (contention.rs): only while spins keep
    /// finding jobs — many callers keep the queue fed, and a spin saves a wake-up per call —
    /// and, to notice when that starts, on one idle moment in [`PROBE_EVERY`]. With one caller
    /// on a busy machine the next job comes only after the reply got through, so spins find
    /// nothing and stop.
    pub fn spin_pays(&self) -> bool {
        self.score.load(Ordering::Relaxed) >= SCORE_KEEP
            || self
                .probes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PROBE_EVERY)
    }

    /// What a spin on a busy machine found: a job raises the score by one (up to 16), none
    /// halves it.
    pub fn spin_outcome(&self, found: bool) {
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(if found { (s + 1).min(16) } else { s / 2 })
            });
    }

    pub fn spin_time(&self) -> Duration {
        self.spin
    }

    /// Call after pushing a job.
    pub fn after_submit(&self) {
        fence(Ordering::SeqCst);
        if self.ready.load(Ordering::SeqCst) == 0 {
            self.wake_one();
        }
    }

    /// Call after taking a job, with whether the queue still holds more.
    pub fn took_job(&self, more_queued: bool) {
        if more_queued && self.ready.load(Ordering::SeqCst) == 0 {
            self.wake_one();
        }
    }

    /// Wakes the most recently parked thread, if any.
    pub fn wake_one(&self) {
        if self.parked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let waiter = {
            let mut stack = self.stack.lock();
            let w = stack.pop();
            if w.is_some() {
                self.parked.fetch_sub(1, Ordering::SeqCst);
            }
            w
        };
        if let Some(w) = waiter {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            w.woken.store(true, Ordering::SeqCst);
            w.thread.unpark();
        }
    }

    /// Wakes every parked thread (shutdown: `has_work` must then say true).
    pub fn wake_all(&self) {
        let waiters = {
            let mut stack = self.stack.lock();
            self.parked.store(0, Ordering::SeqCst);
            std::mem::take(&mut *stack)
        };
        for w in waiters {
            w.woken.store(true, Ordering::SeqCst);
            w.thread.unpark();
        }
    }

    /// Waits until woken, unless `has_work()` (checked after registering as parked).
    pub fn park(&self, has_work: impl Fn() -> bool) {
        let me = me();
        {
            let mut stack = self.stack.lock();
            self.parked.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if has_work() {
                self.parked.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            me.woken.store(false, Ordering::SeqCst);
            stack.push(me.clone());
            self.parks.fetch_add(1, Ordering::Relaxed);
        }
        while !me.woken.load(Ordering::SeqCst) {
            std::thread::park();
        }
    }

    /// Marks the caller ready until `ready_done` (a thread on its way back to the queue).
    pub fn ready_begin(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    pub fn ready_done(&self) {
        self.ready.fetch_sub(1, Ordering::SeqCst);
    }

    /// Spins on `poll` for up to the spin time if fewer than `max_spinners` threads do.
    /// `stop()` ends the spin early (shutdown). Readiness is the caller's business.
    pub fn spin_for<T>(
        &self,
        mut poll: impl FnMut() -> Option<T>,
        stop: impl Fn() -> bool,
    ) -> Option<T> {
        if self.spinning.fetch_add(1, Ordering::SeqCst) >= self.max_spinners {
            self.spinning.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let start = Instant::now();
        let mut n: u32 = 0;
        let found = loop {
            if let Some(item) = poll() {
                break Some(item);
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && (start.elapsed() >= self.spin || stop()) {
                break None;
            }
            std::hint::spin_loop();
        };
        self.spinning.fetch_sub(1, Ordering::SeqCst);
        found
    }

    /// Stops counting the caller as ready and takes a last look: a submit may have seen it
    /// ready just before, and then woke nobody.
    pub fn leave_ready<T>(&self, poll: impl FnOnce() -> Option<T>) -> Option<T> {
        self.ready.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        poll()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_machine_spins_continue_while_they_find_jobs() {
        let idle = Idle::new(1, Duration::from_micros(50));
        // Probes only, at first: one idle moment in PROBE_EVERY.
        let probes = (0..PROBE_EVERY * 2).filter(|_| idle.spin_pays()).count();
        assert_eq!(probes, 2);
        for _ in 0..SCORE_KEEP {
            idle.spin_outcome(true);
        }
        assert!((0..10).all(|_| idle.spin_pays()));
        // Spins that find nothing stop it again.
        idle.spin_outcome(false);
        assert!(idle.score.load(Ordering::Relaxed) < SCORE_KEEP);
    }
    use crossbeam_channel::{bounded, TryRecvError};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::thread;

    /// The pool's thread loop, minus Python: every job must be taken, none stranded.
    fn run(threads: usize, producer_count: usize, jobs_each: usize, blocking_every: usize) {
        let idle = Arc::new(Idle::new(1, Duration::from_micros(20)));
        let (tx, rx) = bounded::<usize>(jobs_each * producer_count);
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (idle, rx, done, stop) = (idle.clone(), rx.clone(), done.clone(), stop.clone());
                thread::spawn(move || {
                    idle.ready_begin();
                    loop {
                        if stop.load(Ordering::SeqCst) {
                            idle.ready_done();
                            break;
                        }
                        let job = match rx.try_recv() {
                            Ok(j) => Some(j),
                            Err(TryRecvError::Empty) => {
                                idle.spin_for(|| rx.try_recv().ok(), || stop.load(Ordering::SeqCst))
                            }
                            Err(TryRecvError::Disconnected) => None,
                        };
                        let job = match job {
                            Some(j) => {
                                idle.ready_done();
                                Some(j)
                            }
                            None => idle.leave_ready(|| rx.try_recv().ok()),
                        };
                        match job {
                            Some(j) => {
                                idle.took_job(!rx.is_empty());
                                if blocking_every > 0 && j % blocking_every == 0 {
                                    thread::sleep(Duration::from_millis(2));
                                }
                                idle.ready_begin();
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            None => {
                                idle.park(|| !rx.is_empty() || stop.load(Ordering::SeqCst));
                                idle.ready_begin();
                            }
                        }
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..producer_count)
            .map(|p| {
                let (idle, tx) = (idle.clone(), tx.clone());
                thread::spawn(move || {
                    for i in 0..jobs_each {
                        tx.send(p * jobs_each + i).unwrap();
                        idle.after_submit();
                        if i % 97 == 0 {
                            thread::sleep(Duration::from_micros(50));
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let total = producer_count * jobs_each;
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::SeqCst) < total {
            assert!(
                Instant::now() < deadline,
                "stranded jobs: {} of {} done",
                done.load(Ordering::SeqCst),
                total
            );
            thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
        idle.wake_all();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), total);
    }

    #[test]
    fn every_job_is_taken_under_load() {
        run(8, 4, 20_000, 0);
    }

    #[test]
    fn blocking_jobs_never_strand_the_queue() {
        run(16, 4, 2_000, 7);
    }

    #[test]
    fn one_thread_alone_takes_everything() {
        run(1, 4, 5_000, 0);
    }
}
