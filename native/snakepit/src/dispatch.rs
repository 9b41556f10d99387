//! The calls into Python: `snakepit_bridge._runtime` (adapters, their commands, cleanup, the
//! environment) and the adapter methods a job runs.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList, PyTuple};
use rustler::{Binary, Env, Term, TermType};

use crate::atoms;
use crate::convert;
use crate::error::{Error, Result};
use crate::worker::{self, Worker};

/// Calls `snakepit_bridge._runtime.<func>(*args)`.
pub fn call_runtime<'py>(
    py: Python<'py>,
    func: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    py.import("snakepit_bridge._runtime")?
        .getattr(func)?
        .call1(args)
}

/// Sets the pool's `adapter_env` before the adapter is imported (warnings are logged by Python).
pub fn apply_env(py: Python<'_>, env: &[(String, String)]) -> Result<()> {
    if env.is_empty() {
        return Ok(());
    }
    call_runtime(py, "apply_env", (env.to_vec(),))
        .map(|_| ())
        .map_err(|e| Error::from_py(py, e))
}

/// What `create_worker` passes to `_runtime.create_adapter`.
pub struct AdapterSpec<'a> {
    /// The adapter class, `"module.Class"`.
    pub adapter: &'a str,
    pub pool_name: &'a str,
    pub threads_per_worker: usize,
    pub thread_safety_check: bool,
    /// The pool's `ndarray:` option ("list" or "struct").
    pub ndarray: &'a str,
}

/// Creates worker `index`: an instance of the adapter and its commands.
pub fn create_worker(py: Python<'_>, spec: &AdapterSpec<'_>, index: usize) -> Result<Worker> {
    (|| -> PyResult<Worker> {
        let options = PyDict::new(py);
        options.set_item("threaded", true)?;
        options.set_item("max_workers", spec.threads_per_worker)?;
        options.set_item("thread_safety_check", spec.thread_safety_check)?;
        options.set_item("pool_name", spec.pool_name)?;
        options.set_item("ndarray", spec.ndarray)?;
        let adapter = call_runtime(
            py,
            "create_adapter",
            (spec.adapter, spec.pool_name, index, options),
        )?;
        let commands = call_runtime(py, "command_table", (&adapter,))?;
        worker::from_adapter(py, adapter, commands)
    })()
    .map_err(|e| Error::from_py(py, e))
}

/// Runs the adapter's `cleanup()`; a failure is printed by Python.
pub fn cleanup(py: Python<'_>, worker: &Worker) {
    if let Err(e) = call_runtime(py, "cleanup", (worker.adapter.bind(py),)) {
        e.print(py);
    }
}

/// Converts the result of `command` into `env`; a failed conversion of an iterator says to use
/// `execute_stream` (the message is only looked up on failure).
pub fn result_term<'a>(
    py: Python<'_>,
    env: Env<'a>,
    command: Term<'a>,
    obj: &Bound<'_, PyAny>,
) -> Result<Term<'a>> {
    convert::py_to_term(env, obj).map_err(|e| match e {
        Error::Conversion(_) => result_message(py, "not_a_value", command, obj)
            .map(Error::conversion)
            .unwrap_or(e),
        e => e,
    })
}

/// The iterator a stream of `command` reads: the result must be one (a generator, or what
/// `iter(...)` returns), never iterated implicitly (a dict would stream its keys).
pub fn stream_iterator<'py>(
    py: Python<'py>,
    command: Term<'_>,
    obj: Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    if obj.cast::<PyIterator>().is_ok() {
        return Ok(obj);
    }
    Err(Error::conversion(
        result_message(py, "not_an_iterator", command, &obj).unwrap_or_else(|| {
            "execute_stream needs a command that returns an iterator or generator".into()
        }),
    ))
}

/// `snakepit_bridge._dispatch.<func>(command, result)`: the message for a result that does
/// not suit the call (shared with the `:process` worker), or `None`.
fn result_message(
    py: Python<'_>,
    func: &str,
    command: Term<'_>,
    obj: &Bound<'_, PyAny>,
) -> Option<String> {
    let name = command_name(command).ok()?;
    py.import("snakepit_bridge._dispatch")
        .and_then(|m| m.getattr(func)?.call1((name, obj)))
        .and_then(|m| m.extract::<Option<String>>())
        .ok()
        .flatten()
}

fn command_name<'a>(command: Term<'a>) -> Result<&'a str> {
    let bin =
        Binary::from_term(command).map_err(|_| Error::conversion("command must be a string"))?;
    std::str::from_utf8(bin.as_slice())
        .map_err(|_| Error::conversion("command must be valid UTF-8"))
}

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

/// Calls the adapter method `command` with `args` (map: keyword arguments, list: positional,
/// nil: none).
pub fn invoke<'py>(
    py: Python<'py>,
    worker: &Worker,
    command: Term<'_>,
    args: Term<'_>,
) -> Result<Bound<'py, PyAny>> {
    let name = command_name(command)?;
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

/// The adapter's commands with descriptions and parameters (`tools/1`).
pub fn tools<'a>(py: Python<'_>, env: Env<'a>, worker: &Worker) -> Result<Term<'a>> {
    let tools =
        call_runtime(py, "tools", (worker.adapter.bind(py),)).map_err(|e| Error::from_py(py, e))?;
    convert::py_to_term(env, &tools)
}
