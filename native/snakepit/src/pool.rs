//! The native pool: `pool_size` workers (one adapter instance each) × `threads_per_worker`
//! native threads, one bounded queue, replies sent straight from the pool thread to the caller.
//! This module holds its configuration and lifecycle (start, submit, stop, the owner monitor);
//! what each thread does is in thread.rs, the calls into Python in dispatch.rs, the counters'
//! terms in stats.rs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use pyo3::prelude::*;
use rustler::{Env, LocalPid, NifTuple};

use crate::dispatch::{self, AdapterSpec};
use crate::error::{Error, Result};
use crate::idle::Idle;
use crate::interrupt;
use crate::job::{Job, JobCtl, JobHost};
use crate::runtime::{self, RuntimeConfig};
use crate::slot::ThreadSlot;
use crate::worker::{RecyclePolicy, Worker, WorkerSlot};

/// Stack of each pool thread: room for deep conversions and Python code.
const THREAD_STACK: usize = 16 * 1024 * 1024;

/// How long `stop` waits for the threads it interrupted at the end of its grace period.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// How long `stop` waits for the adapters' `cleanup()` when some threads did not stop (one of
/// them may hold the GIL in C): the cleanups still run, later.
const CLEANUP_WAIT: Duration = Duration::from_secs(2);

/// The pool configuration the NIF receives (already validated by `Snakepit.Config`).
#[derive(rustler::NifMap, Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub pool_size: usize,
    pub threads_per_worker: usize,
    pub adapter: String,
    pub max_queue: usize,
    pub thread_safety_check: bool,
    /// How results' NumPy arrays cross: "list" or "struct" (ndarray.rs).
    pub ndarray: String,
    pub adapter_env: Vec<(String, String)>,
    pub runtime: RuntimeConfig,
    /// Recycle a worker after this many calls (0: never).
    pub worker_max_requests: u64,
    /// Recycle a worker after this many milliseconds (0: never).
    pub worker_ttl_ms: u64,
    /// `worker_profile: :subinterpreter`: each worker in its own interpreter (subinterp/).
    pub subinterpreters: bool,
}

impl PoolConfig {
    /// A new instance of the adapter for worker `index`.
    pub fn create_worker(&self, py: Python<'_>, index: usize) -> Result<Worker> {
        let spec = AdapterSpec {
            adapter: &self.adapter,
            pool_name: &self.name,
            threads_per_worker: self.threads_per_worker,
            thread_safety_check: self.thread_safety_check,
            ndarray: &self.ndarray,
        };
        dispatch::create_worker(py, &spec, index)
    }
}

#[derive(Default)]
pub struct Counters {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub rejected: AtomicU64,
    pub active: AtomicUsize,
}

/// The machine's cores (for the number of spinning threads).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Rejects a pool without threads or queue.
pub(crate) fn check_sizes(config: &PoolConfig) -> Result<()> {
    if config.pool_size == 0 || config.threads_per_worker == 0 || config.max_queue == 0 {
        return Err(Error::Validation {
            message: "pool_size, threads_per_worker and max_queue must be positive".into(),
            available: vec![],
        });
    }
    Ok(())
}

/// What each pool thread runs: `thread::thread_main` (passed in by nif.rs, since thread.rs
/// depends on this module). It signals on the sender once it is ready to take jobs.
pub type ThreadMain = fn(Arc<PoolInner>, usize, Sender<()>);

pub struct PoolInner {
    pub config: PoolConfig,
    tx: Sender<Box<Job>>,
    pub(crate) rx: Receiver<Box<Job>>,
    pub workers: Vec<WorkerSlot>,
    pub(crate) policy: RecyclePolicy,
    /// The pool's Elixir process: recycling events go there.
    pub(crate) owner: LocalPid,
    pub slots: Vec<Arc<ThreadSlot>>,
    pub counters: Counters,
    pub idle: Idle,
    pub(crate) shutdown: AtomicBool,
    submitting: AtomicUsize,
    /// Each thread's handle, with its index.
    threads: Mutex<Vec<(usize, JoinHandle<()>)>>,
    started_at: Instant,
    /// Per worker: its threads that have not exited, and whether its `cleanup()` ran.
    pub(crate) live_threads: Vec<AtomicUsize>,
    cleaned: Vec<AtomicBool>,
    /// `stop` is past waiting: a thread that exits later cleans its worker up if it is the last.
    pub(crate) stop_done: AtomicBool,
    /// The :subinterpreter profile's interpreters (None in the :thread profile): its threads
    /// clean their workers up themselves, and cancellations go to its own interrupter.
    pub(crate) interps: Option<Arc<crate::subinterp::Interps>>,
    /// Calls run on the caller's scheduler (inline.rs).
    pub(crate) inline: crate::inline::Inline,
}

impl Drop for PoolInner {
    /// The last reference can go on a scheduler (the pool resource's destructor): the adapter
    /// instances go to the release thread, which drops them attached (release.rs). A
    /// :subinterpreter pool's were already dropped in their interpreters (`WorkerSlot::retire`).
    fn drop(&mut self) {
        let workers = std::mem::take(&mut self.workers);
        crate::release::python(workers, None);
    }
}

/// A thread still running when `stop` returned, and why: `{name, reason}` for Elixir.
#[derive(NifTuple)]
#[rustler(encode)]
pub struct Straggler {
    pub name: String,
    pub reason: &'static str,
}

/// The resource Elixir holds for a pool. It monitors the pool's Elixir process: when that
/// process dies without stopping the pool (killed, so no `terminate/2`), the pool is stopped
/// anyway, so no native pool outlives its owner.
pub struct PoolRef(pub Arc<PoolInner>);

// rustler returns a NIF's value from inside `catch_unwind`, so a NIF that returns a
// `ResourceArc<PoolRef>` needs it; encoding the resource reads none of its state.
impl std::panic::RefUnwindSafe for PoolRef {}

#[rustler::resource_impl]
impl rustler::Resource for PoolRef {
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: rustler::Monitor) {
        if self.0.is_stopped() {
            return;
        }
        // Stopping joins threads: never on the scheduler that runs this callback.
        let pool = Arc::clone(&self.0);
        let _ = std::thread::Builder::new()
            .name("snakepit-stop".into())
            .spawn(move || pool.stop(Duration::from_secs(5)));
    }
}

impl JobHost for PoolInner {
    /// Raises `snakepit_bridge.Cancelled` in pool thread `thread` if it still runs job `job`.
    fn interrupt(&self, thread: usize, job: u64) {
        if crate::aio::cancel(job) {
            return; // an async job: its coroutine is cancelled on its event loop
        }
        if let Some(slot) = self.slots.get(thread) {
            match &self.interps {
                Some(interps) => interps.interrupt(slot, job),
                None => interrupt::request(slot, job),
            }
        }
    }

    fn cancelled_queued(&self) {
        self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
    }
}

impl PoolInner {
    /// Starts the interpreter if needed, creates the adapters and the threads (each runs
    /// `thread_main`).
    pub fn start(
        config: PoolConfig,
        owner: LocalPid,
        thread_main: ThreadMain,
    ) -> Result<Arc<PoolInner>> {
        check_sizes(&config)?;
        runtime::ensure_started(&config.runtime)?;
        let workers = crate::gil_gate::attach(|py| -> Result<Vec<Worker>> {
            dispatch::apply_env(py, &config.adapter_env)?;
            (0..config.pool_size)
                .map(|i| config.create_worker(py, i))
                .collect()
        })?;
        let max_spinners = if runtime::FREE_THREADED { cores() } else { 1 };
        Self::launch(config, owner, thread_main, workers, None, max_spinners)
    }

    /// Starts the threads of a pool whose workers exist (`interps`: the :subinterpreter
    /// profile's, in whose interpreters they were made).
    pub(crate) fn launch(
        config: PoolConfig,
        owner: LocalPid,
        thread_main: ThreadMain,
        workers: Vec<Worker>,
        interps: Option<Arc<crate::subinterp::Interps>>,
        max_spinners: usize,
    ) -> Result<Arc<PoolInner>> {
        let policy = RecyclePolicy {
            max_requests: (config.worker_max_requests > 0).then_some(config.worker_max_requests),
            ttl: (config.worker_ttl_ms > 0).then(|| Duration::from_millis(config.worker_ttl_ms)),
        };
        // Inline calls need the main interpreter and no recycling (inline.rs).
        let inline = crate::inline::Inline::new(
            interps.is_none() && policy.max_requests.is_none() && policy.ttl.is_none(),
            &workers,
        );
        let workers = workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| WorkerSlot::new(i, w))
            .collect();
        let capacity = config.pool_size * config.threads_per_worker;
        let (tx, rx) = crossbeam_channel::bounded(config.max_queue);
        let spin_us = std::env::var("SNAKEPIT_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50u64);
        let slots = (0..capacity)
            .map(|i| {
                let worker = i / config.threads_per_worker;
                let t = i % config.threads_per_worker;
                let name = format!("snakepit-{}-w{}-t{}", config.name, worker, t);
                Arc::new(ThreadSlot::new(name, worker))
            })
            .collect();
        let config_pool_size = config.pool_size;
        let pool = Arc::new(PoolInner {
            config,
            tx,
            rx,
            workers,
            policy,
            owner,
            slots,
            counters: Counters::default(),
            idle: Idle::new(max_spinners.min(capacity), Duration::from_micros(spin_us)),
            shutdown: AtomicBool::new(false),
            submitting: AtomicUsize::new(0),
            threads: Mutex::new(Vec::with_capacity(capacity)),
            started_at: Instant::now(),
            live_threads: (0..config_pool_size).map(|_| AtomicUsize::new(0)).collect(),
            cleaned: (0..config_pool_size)
                .map(|_| AtomicBool::new(false))
                .collect(),
            stop_done: AtomicBool::new(false),
            inline,
            interps,
        });
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(capacity);
        for i in 0..capacity {
            let p = Arc::clone(&pool);
            let started = started_tx.clone();
            let live = &pool.live_threads[pool.slots[i].worker];
            live.fetch_add(1, Ordering::SeqCst);
            let handle = std::thread::Builder::new()
                .name(pool.slots[i].name.chars().take(15).collect())
                .stack_size(THREAD_STACK)
                .spawn(move || thread_main(p, i, started));
            match handle {
                Ok(h) => pool.threads.lock().push((i, h)),
                Err(e) => {
                    live.fetch_sub(1, Ordering::SeqCst);
                    pool.stop(Duration::from_secs(5));
                    return Err(Error::Worker(format!("cannot start pool thread: {e}")));
                }
            }
        }
        drop(started_tx);
        for _ in 0..capacity {
            let _ = started_rx.recv();
        }
        Ok(pool)
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Queues a job; never blocks.
    pub fn submit(&self, job: Box<Job>) -> std::result::Result<(), (Box<Job>, Error)> {
        self.submitting.fetch_add(1, Ordering::SeqCst);
        if self.shutdown.load(Ordering::SeqCst) {
            self.submitting.fetch_sub(1, Ordering::SeqCst);
            return Err((
                job,
                Error::Pool(format!("pool {} is stopped", self.config.name)),
            ));
        }
        let pushed = self.tx.try_send(job);
        self.submitting.fetch_sub(1, Ordering::SeqCst);
        match pushed {
            Ok(()) => {
                self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                self.idle.after_submit();
                Ok(())
            }
            Err(TrySendError::Full(job)) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err((
                    job,
                    Error::Saturated {
                        message: format!(
                            "pool {} is saturated: its queue holds max_queue = {} jobs",
                            self.config.name, self.config.max_queue
                        ),
                        max_queue: self.config.max_queue,
                    },
                ))
            }
            Err(TrySendError::Disconnected(job)) => Err((
                job,
                Error::Pool(format!("pool {} is stopped", self.config.name)),
            )),
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Stops the pool: refuses new jobs, lets running jobs finish for `grace`, then interrupts
    /// those still running (they answer with a `:pool` error) and waits up to
    /// `INTERRUPT_GRACE` more for their threads; answers queued jobs with a `:pool` error; runs
    /// the `cleanup()` of each worker whose threads all exited (a worker whose thread is still
    /// running is cleaned up by that thread when it exits). Returns the threads still running.
    pub fn stop(self: &Arc<Self>, grace: Duration) -> Vec<Straggler> {
        if self.shutdown.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        while self.submitting.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
        self.idle.wake_all();
        let deadline = Instant::now() + grace;
        let mut handles = std::mem::take(&mut *self.threads.lock());
        let mut interrupted_at: Option<Instant> = None;
        loop {
            handles.retain(|(_, h)| !h.is_finished());
            if handles.is_empty() {
                break;
            }
            let now = Instant::now();
            match interrupted_at {
                None if now >= deadline => {
                    for (i, slot) in self.slots.iter().enumerate() {
                        let job = {
                            let mut run = slot.run.lock();
                            run.stopped = run.job != 0;
                            run.job
                        };
                        if job != 0 {
                            self.interrupt(i, job);
                        }
                    }
                    interrupted_at = Some(now);
                }
                Some(at) if now >= at + INTERRUPT_GRACE => break,
                _ => {}
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let stragglers: Vec<Straggler> = handles
            .iter()
            .map(|(i, _)| {
                let slot = &self.slots[*i];
                let run = *slot.run.lock();
                let reason = if run.job == 0 {
                    "outside a call (recycling its worker)"
                } else if run.delivered {
                    "still running after snakepit_bridge.Cancelled was raised in its call"
                } else {
                    "blocked in a C call"
                };
                Straggler {
                    name: slot.name.clone(),
                    reason,
                }
            })
            .collect();
        // Not joined: such a thread exits on its own when it can.
        drop(handles);
        // Replies and demonitors must come from a non-scheduler thread.
        std::thread::scope(|s| {
            s.spawn(|| self.drain_queue());
        });
        self.stop_done.store(true, Ordering::SeqCst);
        if stragglers.is_empty() {
            crate::gil_gate::attach(|py| self.cleanup_left_workers(py));
        } else {
            // The cleanups attach on a thread of their own: a straggler may hold the GIL.
            let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
            let pool = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("snakepit-stop".into())
                .spawn(move || {
                    crate::gil_gate::attach(|py| pool.cleanup_left_workers(py));
                    let _ = done_tx.send(());
                });
            if spawned.is_ok() {
                let _ = done_rx.recv_timeout(CLEANUP_WAIT);
            }
        }
        stragglers
    }

    /// Runs the `cleanup()` of each worker whose threads all exited.
    fn cleanup_left_workers(&self, py: Python<'_>) {
        if self.interps.is_some() {
            return; // each worker's last thread cleans it up in its interpreter (subinterp/)
        }
        for w in 0..self.workers.len() {
            if self.live_threads[w].load(Ordering::SeqCst) == 0 {
                self.cleanup_worker(py, w);
            }
        }
    }

    /// Runs worker `w`'s `cleanup()`, once, and drops its instance here, attached to its own
    /// interpreter (a :subinterpreter worker's must never reach the release thread, which
    /// drops in the main one: docs/architecture.md, "Dropping Python objects").
    pub(crate) fn cleanup_worker(&self, py: Python<'_>, w: usize) {
        if !self.cleaned[w].swap(true, Ordering::SeqCst) {
            dispatch::cleanup(py, &self.workers[w].get());
            drop(self.workers[w].retire(py));
        }
    }

    fn drain_queue(&self) {
        while let Ok(job) = self.rx.try_recv() {
            if job.ctl.abandon() {
                let err = Error::Pool(format!(
                    "pool stopped before the call ran (pool :{})",
                    self.config.name
                ));
                (*job).reply(Err(err));
            } else {
                JobCtl::demonitor(&job.ctl);
            }
        }
    }

    /// The error of a call that the pool's stop cut off.
    pub(crate) fn stopped_error(&self) -> Error {
        Error::Pool(format!(
            "pool stopped while the call ran (pool :{})",
            self.config.name
        ))
    }

    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }
}
