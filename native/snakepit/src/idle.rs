//! How idle pool threads wait for work without costing the caller a wake-up per call.
//!
//! `ready` counts the threads that will look at the queue soon without being woken: the
//! spinners (at most `max_spinners`) and threads on their way back from a wake-up (on GIL
//! builds they may wait for the GIL). A submit wakes a parked thread only when nobody is ready;
//! a thread that takes a job while more are queued and nobody is ready wakes one more, so a
//! job that blocks (NumPy, sleep) never strands the queue behind it.
//!
//! Parking uses a permit count under a mutex; every way out of `park` consumes a permit if
//! one is there, so no wake-up is ever left over while threads wait (a lost wake-up would leave
//! a job queued with every thread asleep). Submitters read `parked` and `ready` without the
//! lock; the SeqCst fences on both sides make sure that either the submitter sees the parker,
//! or the parker sees the job.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub struct Idle {
    ready: AtomicUsize,
    parked: AtomicUsize,
    permits: Mutex<usize>,
    cv: Condvar,
    max_spinners: usize,
    spin: Duration,
}

impl Idle {
    pub fn new(max_spinners: usize, spin: Duration) -> Self {
        Idle {
            ready: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            permits: Mutex::new(0),
            cv: Condvar::new(),
            max_spinners: max_spinners.max(1),
            spin,
        }
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

    pub fn wake_one(&self) {
        if self.parked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut permits = self.permits.lock();
        if *permits < self.parked.load(Ordering::SeqCst) {
            *permits += 1;
        }
        self.cv.notify_one();
    }

    pub fn wake_all(&self, threads: usize) {
        let mut permits = self.permits.lock();
        *permits = threads;
        self.cv.notify_all();
    }

    /// Waits until woken, or until `has_work()` (checked after registering as parked).
    pub fn park(&self, has_work: impl Fn() -> bool) {
        let mut permits = self.permits.lock();
        self.parked.fetch_add(1, Ordering::SeqCst);
        loop {
            if *permits > 0 {
                *permits -= 1;
                break;
            }
            if has_work() {
                break;
            }
            self.cv.wait(&mut permits);
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Marks the caller ready until `ready_done` (a thread on its way back to the queue).
    pub fn ready_begin(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    pub fn ready_done(&self) {
        self.ready.fetch_sub(1, Ordering::SeqCst);
    }

    /// Spins on `poll` for up to the spin time if fewer than `max_spinners` threads do.
    /// `stop()` ends the spin early (shutdown).
    pub fn spin_for<T>(
        &self,
        mut poll: impl FnMut() -> Option<T>,
        stop: impl Fn() -> bool,
    ) -> Option<T> {
        if self.ready.fetch_add(1, Ordering::SeqCst) >= self.max_spinners {
            self.ready.fetch_sub(1, Ordering::SeqCst);
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
        self.ready.fetch_sub(1, Ordering::SeqCst);
        match found {
            Some(item) => Some(item),
            None => {
                // A submit may have seen us ready just before we stopped: look once more.
                fence(Ordering::SeqCst);
                poll()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                thread::spawn(move || loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let job = match rx.try_recv() {
                        Ok(j) => Some(j),
                        Err(TryRecvError::Empty) => {
                            idle.spin_for(|| rx.try_recv().ok(), || stop.load(Ordering::SeqCst))
                        }
                        Err(TryRecvError::Disconnected) => break,
                    };
                    match job {
                        Some(j) => {
                            idle.took_job(!rx.is_empty());
                            if blocking_every > 0 && j % blocking_every == 0 {
                                thread::sleep(Duration::from_millis(2));
                            }
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            idle.park(|| !rx.is_empty() || stop.load(Ordering::SeqCst));
                            idle.ready_begin();
                            idle.ready_done();
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
        idle.wake_all(threads);
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
