//! The one CPython interpreter of this BEAM node: started once, never finalised.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;
#[cfg(feature = "nif")]
use pyo3::types::PyModule;
#[cfg(feature = "nif")]
use rustler::OwnedEnv;

#[cfg(feature = "nif")]
use crate::convert::{self, PyPid};
use crate::error::{Error, Result};
#[cfg(feature = "nif")]
use crate::mailer;

/// What the Elixir side tells the NIF about the interpreter it was built for.
#[cfg_attr(feature = "nif", derive(rustler::NifMap))]
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `sys.base_prefix` of the build-time interpreter (PYTHONHOME).
    pub home: String,
    /// The interpreter or venv python chosen at build time (becomes `sys.executable`).
    pub executable: String,
    /// site-packages directories of that interpreter/venv, added with `site.addsitedir`.
    pub site_packages: Vec<String>,
    /// Directories put first on `sys.path` (priv/python, the user's `python_path`).
    pub python_path: Vec<String>,
    /// Python logging level of the root logger (records go to Elixir's Logger).
    pub log_level: i64,
    /// `%MapSet{}` fields besides `__struct__` and `map` in this Elixir (see convert.rs).
    pub mapset_fields: Vec<(String, i64)>,
}

static STARTED: OnceLock<std::result::Result<(), Error>> = OnceLock::new();
static START_LOCK: Mutex<()> = Mutex::new(());

/// Starts the interpreter on first use; later calls only add `python_path` entries.
pub fn ensure_started(config: &RuntimeConfig) -> Result<()> {
    #[cfg(feature = "nif")]
    convert::set_mapset_fields(&config.mapset_fields);
    {
        let _guard = START_LOCK.lock();
        STARTED.get_or_init(|| unsafe { start(config) }).clone()?;
    }
    crate::gil_gate::attach(|py| add_paths(py, &config.python_path, &config.site_packages))
}

pub fn is_started() -> bool {
    matches!(STARTED.get(), Some(Ok(())))
}

unsafe fn start(config: &RuntimeConfig) -> Result<()> {
    if ffi::Py_IsInitialized() != 0 {
        return Err(Error::Worker(
            "another CPython is already running in this OS process".into(),
        ));
    }
    promote_libpython_to_global();
    tune_malloc();
    // The BEAM ignores SIGCHLD; subprocess.run needs the default disposition to reap children.
    libc::signal(libc::SIGCHLD, libc::SIG_DFL);

    let mut cfg: ffi::PyConfig = std::mem::zeroed();
    ffi::PyConfig_InitPythonConfig(&mut cfg);
    cfg.install_signal_handlers = 0;
    cfg.parse_argv = 0;
    let home = CString::new(config.home.as_str()).map_err(|_| Error::Worker("bad home".into()))?;
    let exe = CString::new(config.executable.as_str())
        .map_err(|_| Error::Worker("bad executable".into()))?;
    let status = ffi::PyConfig_SetBytesString(&mut cfg, &mut cfg.home, home.as_ptr());
    check_status(status, &mut cfg)?;
    let status = ffi::PyConfig_SetBytesString(&mut cfg, &mut cfg.program_name, exe.as_ptr());
    check_status(status, &mut cfg)?;
    let status = ffi::Py_InitializeFromConfig(&cfg);
    check_status(status, &mut cfg)?;
    ffi::PyConfig_Clear(&mut cfg);
    // Release the thread state this (dirty scheduler) thread got from initialisation.
    ffi::PyEval_SaveThread();

    crate::gil_gate::attach(|py| -> Result<()> {
        bootstrap(py, config).map_err(|e| Error::from_py(py, e))
    })
}

unsafe fn check_status(status: ffi::PyStatus, cfg: &mut ffi::PyConfig) -> Result<()> {
    if ffi::PyStatus_Exception(status) == 0 {
        return Ok(());
    }
    ffi::PyConfig_Clear(cfg);
    let msg = if status.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        CStr::from_ptr(status.err_msg)
            .to_string_lossy()
            .into_owned()
    };
    Err(Error::Worker(format!("CPython failed to start: {msg}")))
}

/// ERTS sets glibc's trim threshold at start, which turns off malloc's adaptive mmap
/// threshold: every NumPy temporary of a few hundred KB then becomes a fresh mmap, page-faulted
/// anew on each call (~30 % slower `np.dot` than in a plain Python process). Fixed thresholds
/// restore what a plain Python process gets. `SNAKEPIT_MALLOC_TUNING=0` leaves malloc alone.
unsafe fn tune_malloc() {
    if std::env::var("SNAKEPIT_MALLOC_TUNING").as_deref() == Ok("0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024 * 1024);
    }
}

/// The BEAM loads NIFs with RTLD_LOCAL, so libpython's symbols are invisible to C extensions
/// such as NumPy's. Re-open the already loaded libpython with RTLD_GLOBAL.
unsafe fn promote_libpython_to_global() {
    let mut info: libc::Dl_info = std::mem::zeroed();
    let sym = ffi::Py_IsInitialized as *const libc::c_void;
    if libc::dladdr(sym, &mut info) != 0 && !info.dli_fname.is_null() {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NOLOAD,
        );
    }
}

fn bootstrap(py: Python<'_>, config: &RuntimeConfig) -> PyResult<()> {
    let sys = py.import("sys")?;
    sys.setattr("executable", &config.executable)?;
    sys.setattr("argv", PyList::new(py, [""])?)?;
    add_paths(py, &config.python_path, &config.site_packages)
        .map_err(|e| pyo3::exceptions::PyImportError::new_err(e.to_string()))?;
    #[cfg(feature = "nif")]
    {
        let native = PyModule::new(py, "_snakepit_native")?;
        // Everything it exposes is thread-safe: importing it must not re-enable the GIL on a
        // free-threaded build (a no-op on GIL builds).
        native.gil_used(false)?;
        native.add_class::<PyPid>()?;
        native.add_class::<crate::buffer::ErlBuffer>()?;
        native.add_function(pyo3::wrap_pyfunction!(send, &native)?)?;
        native.add_function(pyo3::wrap_pyfunction!(log, &native)?)?;
        native.add_function(pyo3::wrap_pyfunction!(
            crate::callback::elixir_call,
            &native
        )?)?;
        native.add_function(pyo3::wrap_pyfunction!(
            crate::callback::elixir_depth,
            &native
        )?)?;
        sys.getattr("modules")?
            .set_item("_snakepit_native", native)?;
        py.import("snakepit_bridge._logging")?
            .call_method1("install", (config.log_level,))?;
    }
    Ok(())
}

pub(crate) fn add_paths(py: Python<'_>, paths: &[String], site_packages: &[String]) -> Result<()> {
    (|| -> PyResult<()> {
        let sys_path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
        for dir in paths.iter().rev() {
            if !sys_path.contains(dir)? {
                sys_path.insert(0, dir)?;
            }
        }
        let site = py.import("site")?;
        for dir in site_packages {
            if !sys_path.contains(dir)? {
                site.call_method1("addsitedir", (dir,))?;
            }
        }
        Ok(())
    })()
    .map_err(|e| Error::from_py(py, e))
}

/// `snakepit_bridge.send(pid, term)`: sends a message to an Erlang process from Python.
#[cfg(feature = "nif")]
#[pyfunction]
fn send(pid: &Bound<'_, PyPid>, term: &Bound<'_, PyAny>) -> PyResult<()> {
    let env = OwnedEnv::new();
    let saved = env
        .run(|e| convert::py_to_term(e, term).map(|t| env.save(t)))
        .map_err(convert::to_py_err)?;
    let to = pid.get().pid;
    if mailer::on_scheduler_thread() {
        mailer::post(mailer::Mail::Term {
            env,
            to,
            term: saved,
        });
        return Ok(());
    }
    let mut env = env;
    env.send_and_clear(&to, |e| saved.load(e))
        .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("the process is not alive"))
}

/// `_snakepit_native.log(level, logger, message, thread, pool)`: one Python log record for
/// Elixir's Logger. Never blocks.
#[cfg(feature = "nif")]
#[pyfunction]
#[pyo3(signature = (level, logger, message, thread, pool=None))]
fn log(level: u32, logger: String, message: String, thread: String, pool: Option<String>) {
    mailer::post(mailer::Mail::Log {
        level,
        logger,
        message,
        thread,
        pool,
    });
}

/// What `Snakepit.Runtime.info/0` shows of the running interpreter.
#[cfg_attr(feature = "nif", derive(rustler::NifMap))]
#[cfg_attr(feature = "nif", rustler(encode))]
#[derive(Debug, Clone)]
pub struct PythonInfo {
    /// `"3.13.1"`.
    pub version: String,
    pub free_threaded: bool,
    pub gil_enabled: bool,
    pub executable: String,
    pub prefix: String,
    /// `sys.version`.
    pub full_version: String,
}

/// The running interpreter's `PythonInfo`.
pub fn info() -> Result<PythonInfo> {
    if !is_started() {
        return Err(Error::Pool(
            "the Python interpreter has not been started".into(),
        ));
    }
    crate::gil_gate::attach(|py| {
        (|| -> PyResult<PythonInfo> {
            let sys = py.import("sys")?;
            let gil_enabled = match sys.getattr("_is_gil_enabled") {
                Ok(f) => f.call0()?.extract()?,
                Err(_) => true,
            };
            let vi = sys.getattr("version_info")?;
            let version = format!(
                "{}.{}.{}",
                vi.getattr("major")?,
                vi.getattr("minor")?,
                vi.getattr("micro")?
            );
            Ok(PythonInfo {
                version,
                free_threaded: FREE_THREADED,
                gil_enabled,
                executable: sys.getattr("executable")?.extract()?,
                prefix: sys.getattr("prefix")?.extract()?,
                full_version: sys.getattr("version")?.extract()?,
            })
        })()
        .map_err(|e| Error::from_py(py, e))
    })
}

/// The version of the libpython this NIF runs (`Py_GetVersion`, up to the first space).
pub fn version_string() -> String {
    let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    full.split(' ').next().unwrap_or_default().to_string()
}

/// Whether this NIF was built for a free-threaded (`t`) CPython.
pub const FREE_THREADED: bool = cfg!(Py_GIL_DISABLED);
