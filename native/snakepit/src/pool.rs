//! The thread pool: `pool_size` workers (one adapter instance each) × `threads_per_worker`
//! native threads, one bounded queue, replies sent straight from the pool thread to the caller.
//!
//! Scheduling (docs/architecture.md, "What shaped the pool"): each thread attaches to Python once. A thread that
//! finds the queue empty spins briefly (a bounded number of threads at a time), then detaches
//! and parks. `ready` counts the threads that will look at the queue soon without being woken
//! (spinners, and on GIL builds threads waiting for the GIL); a submit wakes a parked thread only
//! when nobody is ready, and a thread that takes a job while more are queued and nobody is
//! ready wakes one more. That keeps wake-ups (the expensive part of a call) rare under load while
//! a job that blocks in C (NumPy, sleep) never strands the queue.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rustler::types::tuple::make_tuple;
use rustler::{Binary, Encoder, Env, LocalPid, OwnedEnv, Term, TermType};

use crate::atoms;
use crate::convert;
use crate::error::{Error, Result};
use crate::idle::Idle;
use crate::interrupt;
use crate::job::{CancelOutcome, Job, JobCtl, JobHost};
use crate::mailer;
use crate::runtime::{self, RuntimeConfig};
use crate::slot::{Running, ThreadSlot};
use crate::worker::{self, Reason, RecyclePolicy, Worker, WorkerSlot};

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
    pub adapter_env: Vec<(String, String)>,
    pub runtime: RuntimeConfig,
    /// Recycle a worker after this many calls (0: never).
    pub worker_max_requests: u64,
    /// Recycle a worker after this many milliseconds (0: never).
    pub worker_ttl_ms: u64,
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

pub struct PoolInner {
    pub config: PoolConfig,
    tx: Sender<Box<Job>>,
    rx: Receiver<Box<Job>>,
    pub workers: Vec<WorkerSlot>,
    policy: RecyclePolicy,
    /// The pool's Elixir process: recycling events go there.
    owner: LocalPid,
    pub slots: Vec<Arc<ThreadSlot>>,
    pub counters: Counters,
    pub idle: Idle,
    shutdown: AtomicBool,
    submitting: AtomicUsize,
    /// Each thread's handle, with its index.
    threads: Mutex<Vec<(usize, JoinHandle<()>)>>,
    started_at: Instant,
    /// Per worker: its threads that have not exited, and whether its `cleanup()` ran.
    live_threads: Vec<AtomicUsize>,
    cleaned: Vec<AtomicBool>,
    /// `stop` is past waiting: a thread that exits later cleans its worker up if it is the last.
    stop_done: AtomicBool,
}

/// A thread still running when `stop` returned, and why.
pub struct Straggler {
    pub name: String,
    pub reason: &'static str,
}

/// The resource Elixir holds for a pool. It monitors the pool's Elixir process: when that
/// process dies without stopping the pool (killed, so no `terminate/2`), the pool is stopped
/// anyway, so no native pool outlives its owner.
pub struct PoolRef(pub Arc<PoolInner>);

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
        if let Some(slot) = self.slots.get(thread) {
            interrupt::request(slot, job);
        }
    }

    fn cancelled_queued(&self) {
        self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
    }
}

impl PoolInner {
    /// Starts the interpreter if needed, creates the adapters and the threads.
    pub fn start(config: PoolConfig, owner: LocalPid) -> Result<Arc<PoolInner>> {
        if config.pool_size == 0 || config.threads_per_worker == 0 || config.max_queue == 0 {
            return Err(Error::Validation {
                message: "pool_size, threads_per_worker and max_queue must be positive".into(),
                available: vec![],
            });
        }
        runtime::ensure_started(&config.runtime)?;
        let workers = Python::attach(|py| -> Result<Vec<Worker>> {
            apply_env(py, &config.adapter_env)?;
            (0..config.pool_size)
                .map(|i| create_worker(py, &config, i))
                .collect()
        })?;
        let workers = workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| WorkerSlot::new(i, w))
            .collect();
        let policy = RecyclePolicy {
            max_requests: (config.worker_max_requests > 0).then_some(config.worker_max_requests),
            ttl: (config.worker_ttl_ms > 0).then(|| Duration::from_millis(config.worker_ttl_ms)),
        };
        let capacity = config.pool_size * config.threads_per_worker;
        let (tx, rx) = crossbeam_channel::bounded(config.max_queue);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let max_spinners = if runtime::FREE_THREADED { cores } else { 1 };
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
            Python::attach(|py| self.cleanup_left_workers(py));
        } else {
            // The cleanups attach on a thread of their own: a straggler may hold the GIL.
            let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
            let pool = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("snakepit-stop".into())
                .spawn(move || {
                    Python::attach(|py| pool.cleanup_left_workers(py));
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
        for w in 0..self.workers.len() {
            if self.live_threads[w].load(Ordering::SeqCst) == 0 {
                self.cleanup_worker(py, w);
            }
        }
    }

    /// Runs worker `w`'s `cleanup()`, once.
    fn cleanup_worker(&self, py: Python<'_>, w: usize) {
        if !self.cleaned[w].swap(true, Ordering::SeqCst) {
            let adapter = self.workers[w].get();
            if let Err(e) = call_runtime(py, "cleanup", (adapter.adapter.bind(py),)) {
                e.print(py);
            }
        }
    }

    fn drain_queue(&self) {
        while let Ok(job) = self.rx.try_recv() {
            if job.ctl.abandon() {
                let err = Error::Pool(format!(
                    "pool stopped before the call ran (pool :{})",
                    self.config.name
                ));
                send_reply(*job, Err(err));
            } else {
                JobCtl::demonitor(&job.ctl);
            }
        }
    }

    /// The error of a call that the pool's stop cut off.
    fn stopped_error(&self) -> Error {
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

/// Sets the pool's `adapter_env` before the adapter is imported (warnings are logged by Python).
fn apply_env(py: Python<'_>, env: &[(String, String)]) -> Result<()> {
    if env.is_empty() {
        return Ok(());
    }
    call_runtime(py, "apply_env", (env.to_vec(),))
        .map(|_| ())
        .map_err(|e| Error::from_py(py, e))
}

fn call_runtime<'py>(
    py: Python<'py>,
    func: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    py.import("snakepit_bridge._runtime")?
        .getattr(func)?
        .call1(args)
}

fn create_worker(py: Python<'_>, config: &PoolConfig, index: usize) -> Result<Worker> {
    (|| -> PyResult<Worker> {
        let options = PyDict::new(py);
        options.set_item("threaded", true)?;
        options.set_item("max_workers", config.threads_per_worker)?;
        options.set_item("thread_safety_check", config.thread_safety_check)?;
        options.set_item("pool_name", &config.name)?;
        let adapter = call_runtime(
            py,
            "create_adapter",
            (&config.adapter, &config.name, index, options),
        )?;
        let commands = call_runtime(py, "commands", (&adapter,))?;
        worker::from_adapter(py, adapter, commands)
    })()
    .map_err(|e| Error::from_py(py, e))
}

/// Replaces worker `slot`'s instance after `reason`, and tells the pool's process.
fn recycle(py: Python<'_>, pool: &PoolInner, slot: &WorkerSlot, reason: Reason) {
    let outcome = slot.recycle(
        py,
        |py| create_worker(py, &pool.config, slot.index),
        |py, old| {
            if let Err(e) = call_runtime(py, "cleanup", (old.adapter.bind(py),)) {
                e.print(py);
            }
        },
    );
    let reason = match reason {
        Reason::MaxRequests => atoms::max_requests(),
        Reason::Ttl => atoms::ttl(),
    };
    let env = OwnedEnv::new();
    let message = env.run(|e| {
        let term = match &outcome {
            Ok(served) => (atoms::snakepit_recycled(), slot.index, reason, *served).encode(e),
            Err(err) => (
                atoms::snakepit_recycle_failed(),
                slot.index,
                reason,
                err.to_term(e),
            )
                .encode(e),
        };
        env.save(term)
    });
    mailer::post(mailer::Mail::Term {
        env,
        to: pool.owner,
        term: message,
    });
}

// ---------------------------------------------------------------------------------------------
// Pool threads
// ---------------------------------------------------------------------------------------------

fn thread_main(pool: Arc<PoolInner>, index: usize, started: crossbeam_channel::Sender<()>) {
    Python::attach(|py| {
        let slot = Arc::clone(&pool.slots[index]);
        slot.ident.store(
            unsafe { ffi::PyThread_get_thread_ident() } as u64,
            Ordering::SeqCst,
        );
        call_runtime(py, "set_thread_name", (&slot.name, &pool.config.name)).ok();
        interrupt::register_thread(&slot);
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
                Err(TryRecvError::Empty) => spin(py, &pool),
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
                    run_job(py, &pool, &worker, &slot, index, *job);
                    drop(worker);
                    if let Some(reason) = worker_slot.served_one(&pool.policy) {
                        recycle(py, &pool, worker_slot, reason);
                    }
                }
                None => py.detach(|| {
                    pool.idle
                        .park(|| !pool.rx.is_empty() || pool.shutdown.load(Ordering::SeqCst));
                    // Until it holds the GIL again this thread will look at the queue soon.
                    pool.idle.ready_begin();
                }),
            }
        }
        // The last thread of its worker to leave after `stop` returned cleans the worker up
        // (`stop` does it for the workers whose threads all left before).
        let w = slot.worker;
        if pool.live_threads[w].fetch_sub(1, Ordering::SeqCst) == 1
            && pool.stop_done.load(Ordering::SeqCst)
        {
            pool.cleanup_worker(py, w);
        }
    });
}

/// Spins for a job for a short while if fewer than `max_spinners` threads already do.
/// On GIL builds the spinner keeps the GIL (handing it over costs more than the spin); on
/// free-threaded builds it detaches so it never holds up a stop-the-world pause.
fn spin(py: Python<'_>, pool: &PoolInner) -> Option<Box<Job>> {
    let spin_loop = || {
        pool.idle.spin_for(
            || pool.rx.try_recv().ok(),
            || pool.shutdown.load(Ordering::Relaxed),
        )
    };
    if runtime::FREE_THREADED {
        py.detach(spin_loop)
    } else {
        spin_loop()
    }
}

fn run_job(
    py: Python<'_>,
    pool: &PoolInner,
    worker: &Worker,
    slot: &ThreadSlot,
    index: usize,
    job: Job,
) {
    if !job.ctl.start(index) {
        // Cancelled while queued (already counted); the caller is gone or timed out.
        pool.idle.ready_begin();
        JobCtl::demonitor(&job.ctl);
        if job.stream {
            send_stream_end(job, atoms::closed());
        }
        return;
    }
    *slot.run.lock() = Running {
        job: job.ctl.id,
        ..Running::default()
    };
    pool.counters.active.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();

    if job.stream {
        run_stream(py, pool, worker, slot, job, t0);
        return;
    }

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job.env.run(|env| {
            let command = job.command.load(env);
            let args = job.args.load(env);
            call_command(py, worker, env, command, args).map(|t| job.env.save(t))
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
        send_reply(job, result);
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
            invoke(py, worker, command, args).and_then(|obj| {
                obj.try_iter().map(|it| it.into_any()).map_err(|_| {
                    Error::conversion(format!(
                        "execute_stream needs a command that returns an iterator or generator, got {}",
                        obj.get_type()
                            .fully_qualified_name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ))
                })
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
                send_stream_end(job, atoms::done());
            }
            Err(e) => {
                pool.counters.failed.fetch_add(1, Ordering::Relaxed);
                send_reply(job, Err(e));
            }
        }
    } else {
        cancelled_while_running(pool, &job);
        send_stream_end(job, atoms::closed());
    }
}

/// `{ref, :done}` or `{ref, :closed}` to a stream's consumer.
fn send_stream_end(mut job: Job, tag: rustler::Atom) {
    let reference = job.reference.clone();
    let caller = job.caller;
    let _ = job
        .env
        .send_and_clear(&caller, |env| (reference.load(env), tag).encode(env));
}

/// Sends `{ref, {:ok, result}}` or `{ref, {:error, map}}` to the caller.
fn send_reply(mut job: Job, result: Result<rustler::env::SavedTerm>) {
    JobCtl::demonitor(&job.ctl);
    let reference = job.reference.clone();
    let caller = job.caller;
    let _ = job.env.send_and_clear(&caller, |env| {
        let body = match &result {
            Ok(saved) => make_tuple(env, &[atoms::ok().encode(env), saved.load(env)]),
            Err(e) => make_tuple(env, &[atoms::error().encode(env), e.to_term(env)]),
        };
        make_tuple(env, &[reference.load(env), body])
    });
}

fn call_command<'a>(
    py: Python<'_>,
    worker: &Worker,
    env: Env<'a>,
    command: Term<'a>,
    args: Term<'a>,
) -> Result<Term<'a>> {
    let obj = invoke(py, worker, command, args)?;
    convert::py_to_term(env, &obj)
}

/// Calls the adapter method `command` with `args` (map: keyword arguments, list: positional,
/// nil: none).
/// The `:validation` error for a command the adapter does not have; its message comes from
/// `snakepit_bridge._dispatch.unknown_command`, as in the `:process` worker (did you mean, an
/// unmarked method).
fn unknown_command(py: Python<'_>, worker: &Worker, name: &str) -> Error {
    let message = py
        .import("snakepit_bridge._dispatch")
        .and_then(|m| {
            m.getattr("unknown_command")?.call1((
                name,
                &worker.class_name,
                worker.names.clone(),
                worker.adapter.bind(py),
            ))
        })
        .and_then(|m| m.extract::<String>())
        .unwrap_or_else(|_| {
            format!(
                "unknown command {:?} for adapter {}; available commands: {}",
                name,
                worker.class_name,
                worker.names.join(", ")
            )
        });
    Error::Validation {
        message,
        available: worker.names.clone(),
    }
}

fn invoke<'py>(
    py: Python<'py>,
    worker: &Worker,
    command: Term<'_>,
    args: Term<'_>,
) -> Result<Bound<'py, PyAny>> {
    let bin =
        Binary::from_term(command).map_err(|_| Error::conversion("command must be a string"))?;
    let name = std::str::from_utf8(bin.as_slice())
        .map_err(|_| Error::conversion("command must be valid UTF-8"))?;
    let func = match worker.commands.get(name) {
        Some(func) => func,
        None => return Err(unknown_command(py, worker, name)),
    };
    let func = func.bind(py);
    let out = match args.get_type() {
        TermType::Map if args.map_size().unwrap_or(0) == 0 => func.call0(),
        TermType::Map => {
            let kwargs = convert::term_to_py(py, args)?;
            let kwargs = kwargs
                .cast::<PyDict>()
                .map_err(|_| Error::conversion("arguments must be a map"))?;
            for key in kwargs.keys() {
                if !key.is_instance_of::<pyo3::types::PyString>() {
                    return Err(Error::conversion(format!(
                        "argument names must be atoms or strings, got {key}"
                    )));
                }
            }
            func.call((), Some(kwargs))
        }
        TermType::List => {
            let list = convert::term_to_py(py, args)?;
            let list = list
                .cast::<PyList>()
                .map_err(|_| Error::conversion("bad list"))?;
            func.call1(PyTuple::new(py, list.iter()).map_err(|e| Error::from_py(py, e))?)
        }
        TermType::Atom if args.decode::<rustler::Atom>().ok() == Some(atoms::nil()) => func.call0(),
        _ => {
            return Err(Error::conversion(
                "arguments must be a map (keyword arguments), a list (positional) or nil",
            ))
        }
    };
    out.map_err(|e| Error::from_py(py, e))
}

// ---------------------------------------------------------------------------------------------
// Cancelling
// ---------------------------------------------------------------------------------------------

/// Cancels a job (timeout or caller exit).
pub fn cancel(ctl: &JobCtl) -> CancelOutcome {
    ctl.cancel()
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

pub fn stats_term<'a>(env: Env<'a>, pool: &PoolInner) -> Term<'a> {
    let c = &pool.counters;
    let uptime = pool.uptime().as_nanos().max(1) as f64;
    let threads: Vec<Term<'a>> = pool
        .slots
        .iter()
        .map(|s| {
            let busy = s.busy_ns.load(Ordering::Relaxed);
            map(
                env,
                &[
                    (atoms::name(), s.name.encode(env)),
                    (atoms::worker(), s.worker.encode(env)),
                    (
                        atoms::requests(),
                        s.requests.load(Ordering::Relaxed).encode(env),
                    ),
                    (atoms::busy_ms(), (busy as f64 / 1e6).encode(env)),
                    (atoms::busy_share(), (busy as f64 / uptime).encode(env)),
                ],
            )
        })
        .collect();
    let workers: Vec<Term<'a>> = pool
        .workers
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let w = slot.get();
            let requests: u64 = pool
                .slots
                .iter()
                .filter(|s| s.worker == i)
                .map(|s| s.requests.load(Ordering::Relaxed))
                .sum();
            map(
                env,
                &[
                    (atoms::index(), i.encode(env)),
                    (atoms::adapter(), w.class_name.encode(env)),
                    (atoms::requests(), requests.encode(env)),
                    (atoms::threads(), pool.config.threads_per_worker.encode(env)),
                    (
                        atoms::recycles(),
                        slot.recycles.load(Ordering::Relaxed).encode(env),
                    ),
                    (atoms::instance_id(), w.instance_id.encode(env)),
                ],
            )
        })
        .collect();
    let completed = c.completed.load(Ordering::Relaxed);
    let failed = c.failed.load(Ordering::Relaxed);
    map(
        env,
        &[
            (
                atoms::total_requests(),
                c.submitted.load(Ordering::Relaxed).encode(env),
            ),
            (
                atoms::active_requests(),
                c.active.load(Ordering::Relaxed).encode(env),
            ),
            (atoms::queued(), pool.queued().encode(env)),
            (atoms::completed(), completed.encode(env)),
            (atoms::failed(), failed.encode(env)),
            (
                atoms::cancelled(),
                c.cancelled.load(Ordering::Relaxed).encode(env),
            ),
            (
                atoms::rejected(),
                c.rejected.load(Ordering::Relaxed).encode(env),
            ),
            (atoms::max_workers(), pool.capacity().encode(env)),
            (atoms::pool_size(), pool.config.pool_size.encode(env)),
            (
                atoms::threads_per_worker(),
                pool.config.threads_per_worker.encode(env),
            ),
            (atoms::max_queue(), pool.config.max_queue.encode(env)),
            (atoms::thread_utilization(), threads.encode(env)),
            (atoms::workers(), workers.encode(env)),
            (
                atoms::uptime_ms(),
                (pool.uptime().as_millis() as u64).encode(env),
            ),
            (
                atoms::wakeups(),
                pool.idle.wakeups.load(Ordering::Relaxed).encode(env),
            ),
            (
                atoms::parks(),
                pool.idle.parks.load(Ordering::Relaxed).encode(env),
            ),
        ],
    )
}

fn map<'a>(env: Env<'a>, pairs: &[(rustler::Atom, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// `tools/1`: the adapter's commands with descriptions and parameters.
pub fn tools_term<'a>(env: Env<'a>, pool: &PoolInner) -> Result<Term<'a>> {
    Python::attach(|py| {
        let worker = pool.workers[0].get();
        let tools = call_runtime(py, "tools", (worker.adapter.bind(py),))
            .map_err(|e| Error::from_py(py, e))?;
        convert::py_to_term(env, &tools)
    })
}
