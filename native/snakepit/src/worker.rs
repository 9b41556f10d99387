//! Workers: one adapter instance each, and their recycling.
//!
//! A pool thread takes the current instance of its worker for each job (an `Arc` clone), so
//! replacing the instance never disturbs a call in flight: `recycle` builds the new instance,
//! swaps it in, waits until the calls still running on the old one have finished, then runs the
//! old one's `cleanup()`. Only one thread recycles a worker at a time; the others keep serving.
//! A reload (`reload.rs`) swaps instances the same way.
//! A failed re-creation keeps the old instance and retries with exponential backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Result;

/// One adapter instance and its commands.
pub struct Worker {
    pub adapter: Py<PyAny>,
    pub commands: HashMap<String, Py<PyAny>>,
    pub names: Vec<String>,
    /// The commands declared `@tool(inline=True)` (inline.rs).
    pub inline: Vec<String>,
    pub class_name: String,
    /// `id()` of the instance, to tell generations apart.
    pub instance_id: u64,
}

/// When to replace a worker's instance (`None`: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecyclePolicy {
    pub max_requests: Option<u64>,
    pub ttl: Option<Duration>,
}

/// Why a worker was recycled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    MaxRequests,
    Ttl,
}

pub struct WorkerSlot {
    pub index: usize,
    current: RwLock<Arc<Worker>>,
    /// Calls served by the current instance.
    pub served: AtomicU64,
    pub recycles: AtomicU64,
    born: Mutex<Instant>,
    recycling: AtomicBool,
    backoff: Mutex<(u32, Option<Instant>)>,
}

impl WorkerSlot {
    pub fn new(index: usize, worker: Worker) -> Self {
        WorkerSlot {
            index,
            current: RwLock::new(Arc::new(worker)),
            served: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
            born: Mutex::new(Instant::now()),
            recycling: AtomicBool::new(false),
            backoff: Mutex::new((0, None)),
        }
    }

    /// The instance to run the next call on.
    pub fn get(&self) -> Arc<Worker> {
        self.current.read().clone()
    }

    /// Takes the instance out, leaving a hollow one (no commands; its adapter is `None`, an
    /// object every interpreter shares): the :subinterpreter profile drops a worker's objects
    /// inside its interpreter before ending it (subinterp/).
    pub fn retire(&self, py: Python<'_>) -> Arc<Worker> {
        let hollow = Worker {
            adapter: py.None(),
            commands: HashMap::new(),
            names: Vec::new(),
            inline: Vec::new(),
            class_name: String::new(),
            instance_id: 0,
        };
        std::mem::replace(&mut *self.current.write(), Arc::new(hollow))
    }

    /// Counts a finished call; says whether the worker is due for recycling (and claims it).
    pub fn served_one(&self, policy: &RecyclePolicy) -> Option<Reason> {
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = match (policy.max_requests, policy.ttl) {
            (Some(max), _) if served >= max => Reason::MaxRequests,
            (_, Some(ttl)) if self.born.lock().elapsed() >= ttl => Reason::Ttl,
            _ => return None,
        };
        if let (_, Some(next)) = *self.backoff.lock() {
            if Instant::now() < next {
                return None;
            }
        }
        self.recycling
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| reason)
    }

    /// Replaces the instance with one built by `create` (called attached); the old instance's
    /// in-flight calls finish first, then `cleanup` runs on it.
    pub fn recycle(
        &self,
        py: Python<'_>,
        create: impl FnOnce(Python<'_>) -> Result<Worker>,
        cleanup: impl FnOnce(Python<'_>, &Worker),
    ) -> Result<u64> {
        match create(py) {
            Ok(fresh) => {
                let (old, served) = self.swap(fresh);
                self.recycles.fetch_add(1, Ordering::Relaxed);
                self.recycling.store(false, Ordering::SeqCst);
                retire(py, old, cleanup);
                Ok(served)
            }
            Err(e) => {
                let mut backoff = self.backoff.lock();
                let failures = backoff.0 + 1;
                let delay =
                    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
                *backoff = (failures, Some(Instant::now() + delay));
                drop(backoff);
                self.recycling.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Puts `fresh` in place of the current instance (a reload): waits while a recycling of
    /// this worker is swapping, so the two never interleave; returns the old instance, which
    /// the caller retires ([`retire`]).
    pub fn replace(&self, py: Python<'_>, fresh: Worker) -> Arc<Worker> {
        while self
            .recycling
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            py.detach(|| std::thread::sleep(Duration::from_millis(1)));
        }
        let (old, _) = self.swap(fresh);
        self.recycling.store(false, Ordering::SeqCst);
        old
    }

    fn swap(&self, fresh: Worker) -> (Arc<Worker>, u64) {
        let old = std::mem::replace(&mut *self.current.write(), Arc::new(fresh));
        let served = self.served.swap(0, Ordering::Relaxed);
        *self.born.lock() = Instant::now();
        *self.backoff.lock() = (0, None);
        (old, served)
    }
}

/// Waits (detached) until the calls still running on a replaced instance have finished —
/// each holds a clone of it — then runs `cleanup` on it.
pub fn retire(py: Python<'_>, old: Arc<Worker>, cleanup: impl FnOnce(Python<'_>, &Worker)) {
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    cleanup(py, &old);
}

/// Builds a worker from an adapter instance.
pub fn from_adapter(
    py: Python<'_>,
    adapter: Bound<'_, PyAny>,
    commands: Bound<'_, PyAny>,
) -> PyResult<Worker> {
    let dict = commands.cast_into::<PyDict>()?;
    let mut map = HashMap::with_capacity(dict.len());
    let mut inline = Vec::new();
    for (k, v) in dict.iter() {
        let name = k.extract::<String>()?;
        // Set by `@tool(inline=True)` (snakepit_bridge/_tooling.py).
        if v.getattr("__snakepit_inline__")
            .is_ok_and(|f| f.is_truthy().unwrap_or(false))
        {
            inline.push(name.clone());
        }
        map.insert(name, v.unbind());
    }
    // Built-in commands (`__snakepit_*__`, snakepit_bridge._builtins) are not listed.
    let mut names: Vec<String> = map
        .keys()
        .filter(|n| !n.starts_with("__snakepit_"))
        .cloned()
        .collect();
    names.sort();
    let class_name = adapter.get_type().qualname()?.to_string();
    let instance_id = py
        .import("builtins")?
        .getattr("id")?
        .call1((&adapter,))?
        .extract()?;
    Ok(Worker {
        adapter: adapter.unbind(),
        commands: map,
        names,
        inline,
        class_name,
        instance_id,
    })
}
