//! Making, serving and ending the workers' interpreters (CPython >= 3.12), and the profile's
//! interrupter. See mod.rs for the rules and docs/architecture.md for the reasons.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;
use rustler::{LocalPid, OwnedEnv};

use super::{Interp, Interps};
use crate::convert;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::pool::{self, PoolConfig, PoolInner};
use crate::runtime;
use crate::slot::ThreadSlot;
use crate::thread;
use crate::worker::Worker;

/// Stack of the threads that make the interpreters (importing an adapter can recurse deeply).
const MAKER_STACK: usize = 16 * 1024 * 1024;

/// How long a worker's last thread waits for the others to drop their thread states before it
/// ends the interpreter (after that it leaves it, with a warning on stderr).
const END_WAIT: Duration = Duration::from_secs(5);

/// A `PyInterpreterState*`, to hand between threads.
#[derive(Clone, Copy)]
struct InterpPtr(*mut ffi::PyInterpreterState);
unsafe impl Send for InterpPtr {}

/// What making worker `i`'s interpreter gives: the interpreter, its adapter instance, and
/// (worker 0) the tools term.
struct Made {
    interp: InterpPtr,
    /// The interpreter's first thread state, kept (detached) until it ends: CPython 3.12.1
    /// aborts ("init_threadstate: thread state already initialized") when a thread state is
    /// made for an interpreter that has none left, since it then reuses the first one's memory.
    initial: usize,
    worker: Worker,
    tools: Option<(OwnedEnv, rustler::env::SavedTerm)>,
}
unsafe impl Send for Made {}

/// Starts a :subinterpreter pool: one interpreter per worker, each made (and its adapter
/// imported and instantiated) on a thread of its own; then the pool threads.
pub fn start(config: PoolConfig, owner: LocalPid) -> Result<Arc<PoolInner>> {
    pool::check_sizes(&config)?;
    runtime::ensure_started(&config.runtime)?;
    crate::gil_gate::attach(|py| {
        // pyo3 caches this type process-wide and compares against it when it fetches any
        // error: make it here, in the main interpreter, never in a worker's.
        let _ = py.get_type::<pyo3::panic::PanicException>();
        dispatch::apply_env(py, &config.adapter_env)
    })?;
    let mut made: Vec<Made> = Vec::with_capacity(config.pool_size);
    for i in 0..config.pool_size {
        let cfg = config.clone();
        let result = std::thread::Builder::new()
            .name(format!("snakepit-mk{i}"))
            .stack_size(MAKER_STACK)
            .spawn(move || make(&cfg, i))
            .map_err(|e| Error::Worker(format!("cannot start a thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(Error::Worker("internal error making an interpreter".into())));
        match result {
            Ok(m) => made.push(m),
            Err(e) => {
                for m in made {
                    discard(m);
                }
                return Err(e);
            }
        }
    }
    let mut tools = None;
    let mut workers = Vec::with_capacity(made.len());
    let mut list = Vec::with_capacity(made.len());
    for m in made {
        if m.tools.is_some() {
            tools = m.tools;
        }
        workers.push(m.worker);
        list.push(Interp {
            ptr: m.interp.0 as usize,
            initial: std::sync::atomic::AtomicUsize::new(m.initial),
            alive: RwLock::new(true),
        });
    }
    let list = Arc::new(list);
    let (tx, rx) = crossbeam_channel::unbounded();
    {
        let list = Arc::clone(&list);
        std::thread::Builder::new()
            .name("snakepit-sintr".into())
            .spawn(move || run_interrupter(list, rx))
            .map_err(|e| Error::Worker(format!("cannot start a thread: {e}")))?;
    }
    let interps = Arc::new(Interps {
        list,
        interrupter: Mutex::new(tx),
        tools: Mutex::new(tools.expect("worker 0 converts the tools")),
    });
    // Each interpreter has its own GIL: as many spinners as cores, as on a free-threaded build.
    let spinners = pool::cores();
    PoolInner::launch(config, owner, thread_main, workers, Some(interps), spinners)
}

/// On a fresh thread (no thread state): makes worker `index`'s interpreter, imports and
/// instantiates the adapter there, and leaves the interpreter with no thread state.
fn make(config: &PoolConfig, index: usize) -> Result<Made> {
    let interp_config = ffi::PyInterpreterConfig {
        use_main_obmalloc: 0,
        allow_fork: 0,
        allow_exec: 0,
        allow_threads: 1,
        allow_daemon_threads: 0,
        check_multi_interp_extensions: 1,
        gil: ffi::PyInterpreterConfig_OWN_GIL,
    };
    let mut tstate: *mut ffi::PyThreadState = std::ptr::null_mut();
    let status = unsafe { ffi::Py_NewInterpreterFromConfig(&mut tstate, &interp_config) };
    if unsafe { ffi::PyStatus_Exception(status) } != 0 || tstate.is_null() {
        let why = if status.err_msg.is_null() {
            "out of memory".to_string()
        } else {
            unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(Error::Worker(format!(
            "cannot create a subinterpreter for worker {index}: {why}"
        )));
    }
    // The new interpreter's thread state is current and holds its GIL; it is this thread's
    // first, so Python::attach below is a no-op attach to it.
    let interp = InterpPtr(unsafe { ffi::PyThreadState_GetInterpreter(tstate) });
    convert::set_subinterpreter(true);
    let result = Python::attach(|py| -> Result<(Worker, Option<_>)> {
        setup(py, config).map_err(|e| Error::from_py(py, e))?;
        let worker = config
            .create_worker(py, index)
            .map_err(|e| refused_extension(config, e))?;
        let tools = if index == 0 {
            let owned = OwnedEnv::new();
            let saved =
                owned.run(|env| dispatch::tools(py, env, &worker).map(|t| owned.save(t)))?;
            Some((owned, saved))
        } else {
            None
        };
        Ok((worker, tools))
    });
    match result {
        Ok((worker, tools)) => {
            unsafe { ffi::PyEval_SaveThread() };
            Ok(Made {
                interp,
                initial: tstate as usize,
                worker,
                tools,
            })
        }
        Err(e) => {
            unsafe { ffi::Py_EndInterpreter(tstate) };
            Err(e)
        }
    }
}

/// The interpreter's `sys`: what the main one got at start (runtime.rs), which a new
/// interpreter does not inherit.
fn setup(py: Python<'_>, config: &PoolConfig) -> PyResult<()> {
    let sys = py.import("sys")?;
    sys.setattr("executable", &config.runtime.executable)?;
    sys.setattr("argv", PyList::new(py, [""])?)?;
    runtime::add_paths(
        py,
        &config.runtime.python_path,
        &config.runtime.site_packages,
    )
    .map_err(|e| pyo3::exceptions::PyImportError::new_err(e.to_string()))?;
    super::native::install(py)?;
    py.import("snakepit_bridge._logging")?
        .call_method1("install", (config.runtime.log_level,))?;
    Ok(())
}

/// An adapter that imports an extension module without subinterpreter support (NumPy, many
/// C extensions) cannot run in this profile: say which module, and what to use instead.
fn refused_extension(config: &PoolConfig, e: Error) -> Error {
    let message = match &e {
        Error::Python { message, .. } => message.clone(),
        _ => return e,
    };
    if !message.contains("subinterpreter") {
        return e;
    }
    let module = message
        .split_once("module ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(|m| m.trim_matches(|c| c == '\'' || c == '"').to_string())
        .unwrap_or_else(|| "an extension module".into());
    Error::Worker(format!(
        "the adapter {} cannot run in worker_profile :subinterpreter: it imports {module}, an \
         extension module that does not support subinterpreters ({message}); use \
         worker_profile :thread or :process for this adapter",
        config.adapter
    ))
}

/// Ends an interpreter made for a pool that then failed to start (on a fresh thread, whose
/// first thread state is that interpreter's).
fn discard(m: Made) {
    let _ = std::thread::spawn(move || unsafe {
        let m = m;
        let tstate = ffi::PyThreadState_New(m.interp.0);
        ffi::PyEval_RestoreThread(tstate);
        let Made {
            worker,
            tools,
            initial,
            ..
        } = m;
        drop(tools);
        Python::attach(|_py| drop(worker));
        drop_initial(initial);
        ffi::Py_EndInterpreter(tstate);
    })
    .join();
}

/// The body of a :subinterpreter pool thread: a thread state of its worker's interpreter for
/// its whole life, then `thread::serve`. The worker's last thread to leave runs the adapter's
/// `cleanup()`, drops its objects and ends the interpreter.
fn thread_main(pool: Arc<PoolInner>, index: usize, started: Sender<()>) {
    let w = pool.slots[index].worker;
    let interps = Arc::clone(pool.interps.as_ref().expect("a :subinterpreter pool"));
    let interp = interps.list[w].ptr as *mut ffi::PyInterpreterState;
    let tstate = unsafe {
        let tstate = ffi::PyThreadState_New(interp);
        ffi::PyEval_RestoreThread(tstate);
        tstate
    };
    convert::set_subinterpreter(true);
    let last = Python::attach(|py| {
        thread::serve(py, &pool, index, started);
        let last = pool.live_threads[w].fetch_sub(1, Ordering::SeqCst) == 1;
        if last {
            // Drops the instance too, here in its interpreter.
            pool.cleanup_worker(py, w);
            // CPython 3.13 deletes this thread's `threading` dummy when its state is cleared,
            // which Py_EndInterpreter does after `threading` is torn down: do it now.
            let _ = py
                .import("threading")
                .and_then(|t| t.getattr("_thread_local_info"))
                .and_then(|l| l.delattr("_track_dummy_thread_ref"));
            // `threading`'s main thread here is the (gone) thread that made the interpreter,
            // whose id this one may have inherited: keep Py_EndInterpreter's
            // `threading._shutdown` from treating this thread as it.
            let _ = py
                .import("threading")
                .and_then(|t| t.getattr("_main_thread"))
                .and_then(|m| m.setattr("_ident", py.None()));
        }
        last
    });
    unsafe {
        if last {
            end(&interps.list[w], tstate);
        } else {
            ffi::PyThreadState_Clear(tstate);
            ffi::PyThreadState_DeleteCurrent();
        }
    }
}

/// Ends interpreter `it` from its last pool thread (`tstate`, attached): shuts the
/// interrupter out, waits for the other threads' states to go, then `Py_EndInterpreter`.
unsafe fn end(it: &Interp, tstate: *mut ffi::PyThreadState) {
    let saved = ffi::PyEval_SaveThread();
    let mut alive = it.alive.write();
    *alive = false;
    ffi::PyEval_RestoreThread(saved);
    drop_initial(it.initial.swap(0, Ordering::SeqCst));
    let interp = it.ptr as *mut ffi::PyInterpreterState;
    let deadline = Instant::now() + END_WAIT;
    loop {
        let head = ffi::PyInterpreterState_ThreadHead(interp);
        if head == tstate && ffi::PyThreadState_Next(head).is_null() {
            ffi::Py_EndInterpreter(tstate);
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("snakepit: a subinterpreter still has threads; it is left running");
            ffi::PyThreadState_Clear(tstate);
            ffi::PyThreadState_DeleteCurrent();
            return;
        }
        let saved = ffi::PyEval_SaveThread();
        std::thread::sleep(Duration::from_millis(1));
        ffi::PyEval_RestoreThread(saved);
    }
}

/// Deletes an interpreter's first thread state (`Made::initial`; 0: already gone), from a
/// thread attached to that interpreter.
unsafe fn drop_initial(initial: usize) {
    if initial != 0 {
        let initial = initial as *mut ffi::PyThreadState;
        ffi::PyThreadState_Clear(initial);
        ffi::PyThreadState_Delete(initial);
    }
}

/// This pool's interrupter: `PyThreadState_SetAsyncExc` finds only the current interpreter's
/// threads, so it enters the target's interpreter (a thread state made for the delivery,
/// raw `ffi` only: no pyo3 object is made or dropped here) and raises
/// `snakepit_bridge.Cancelled` in the thread if it still runs the job (checked under the
/// slot's lock, as interrupt.rs does).
fn run_interrupter(list: Arc<Vec<Interp>>, rx: Receiver<(Arc<ThreadSlot>, u64)>) {
    while let Ok((slot, job)) = rx.recv() {
        let it = &list[slot.worker];
        let alive = it.alive.read();
        if !*alive {
            continue;
        }
        unsafe {
            let tstate = ffi::PyThreadState_New(it.ptr as *mut ffi::PyInterpreterState);
            ffi::PyEval_RestoreThread(tstate);
            let exc = cancelled_type();
            {
                let mut run = slot.run.lock();
                if run.job == job && !run.waiting && !run.async_exc && !run.delivered {
                    ffi::PyThreadState_SetAsyncExc(
                        slot.ident.load(Ordering::SeqCst) as std::os::raw::c_long,
                        exc,
                    );
                    run.async_exc = true;
                }
            }
            ffi::Py_DECREF(exc);
            ffi::PyThreadState_Clear(tstate);
            ffi::PyThreadState_DeleteCurrent();
        }
        drop(alive);
    }
}

/// A new reference to `snakepit_bridge.Cancelled` of the current interpreter (`TimeoutError`
/// if it cannot be imported).
unsafe fn cancelled_type() -> *mut ffi::PyObject {
    let module = ffi::PyImport_ImportModule(c"snakepit_bridge.errors".as_ptr());
    if !module.is_null() {
        let exc = ffi::PyObject_GetAttrString(module, c"Cancelled".as_ptr());
        ffi::Py_DECREF(module);
        if !exc.is_null() {
            return exc;
        }
    }
    ffi::PyErr_Clear();
    let exc = ffi::PyExc_TimeoutError;
    ffi::Py_INCREF(exc);
    exc
}
