//! `_snakepit_native` inside a worker's interpreter. The main interpreter's module (runtime.rs)
//! is made by pyo3 (`#[pyclass] Pid`, `#[pyfunction]`s), whose type objects are per process:
//! it must not be imported here. This one is a plain module: `Pid` is a Python class holding
//! the pid's external term format (`raw`), and `send` and `log` are C functions over raw `ffi`
//! (no pyo3 type, cache or owned `Py<T>`), so every object it makes belongs to the interpreter
//! it runs in.

use std::ffi::CStr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyModule, PyTuple};
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

use crate::convert;
use crate::error::{Error, Result};
use crate::mailer;

/// The module's Python part: `Pid` as `snakepit_bridge` documents it.
const PID_CLASS: &CStr = c"
class Pid:
    '''An Erlang process identifier, opaque to Python (a :subinterpreter worker's: holds the
    pid's external term format in ``raw``). Pids compare and hash by it.'''

    __slots__ = ('raw',)
    __module__ = 'snakepit_bridge'

    def __init__(self, raw):
        object.__setattr__(self, 'raw', bytes(raw))

    def __setattr__(self, name, value):
        raise AttributeError('Pid is immutable')

    def __eq__(self, other):
        return isinstance(other, Pid) and other.raw == self.raw

    def __hash__(self):
        return hash(self.raw)

    def __repr__(self):
        return 'Pid<%x>' % (hash(self.raw) & 0xffffffffffff)
";

struct Def(ffi::PyMethodDef);
unsafe impl Sync for Def {}

static SEND: Def = Def(ffi::PyMethodDef {
    ml_name: c"send".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer { PyCFunction: send },
    ml_flags: ffi::METH_VARARGS,
    ml_doc: c"send(pid, term): sends term to the Erlang process pid.".as_ptr(),
});

static LOG: Def = Def(ffi::PyMethodDef {
    ml_name: c"log".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer { PyCFunction: log },
    ml_flags: ffi::METH_VARARGS,
    ml_doc: c"log(level, logger, message, thread, pool=None): one record for Logger.".as_ptr(),
});

/// Registers the module in the current (worker) interpreter's `sys.modules`, before
/// `snakepit_bridge` is imported there.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let module = PyModule::new(py, "_snakepit_native")?;
    let globals = module.dict();
    globals.set_item("__builtins__", py.import("builtins")?)?;
    py.run(PID_CLASS, Some(&globals), None)?;
    for def in [&SEND, &LOG] {
        let f = unsafe {
            let f = ffi::PyCFunction_NewEx(
                &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            Bound::from_owned_ptr_or_err(py, f)?
        };
        let name = unsafe { CStr::from_ptr(def.0.ml_name) }
            .to_str()
            .unwrap_or("");
        module.setattr(name, f)?;
    }
    py.import("sys")?
        .getattr("modules")?
        .set_item("_snakepit_native", module)?;
    Ok(())
}

/// A pid as this interpreter's `_snakepit_native.Pid`.
pub fn pid_to_py<'py>(py: Python<'py>, term: Term<'_>) -> Result<Bound<'py, PyAny>> {
    let raw = term.to_binary();
    (|| {
        let class = py.import("_snakepit_native")?.getattr("Pid")?;
        class.call1((PyBytes::new(py, raw.as_slice()),))
    })()
    .map_err(|e| Error::from_py(py, e))
}

/// The pid an object of this interpreter's `_snakepit_native.Pid` stands for (None: not one).
pub fn py_to_pid<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>) -> Option<Term<'a>> {
    let py = obj.py();
    let class = py.import("_snakepit_native").ok()?.getattr("Pid").ok()?;
    if !obj.is_instance(&class).ok()? {
        return None;
    }
    let raw = obj.getattr("raw").ok()?;
    let bytes = raw.cast::<PyBytes>().ok()?;
    let (term, _) = env.binary_to_term(bytes.as_bytes())?;
    term.decode::<LocalPid>().ok().map(|p| p.encode(env))
}

/// Sets a Python `exc` with `message` and returns NULL (a failed C function's result).
unsafe fn fail(exc: *mut ffi::PyObject, message: &str) -> *mut ffi::PyObject {
    let c = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
    ffi::PyErr_SetString(exc, c.as_ptr());
    std::ptr::null_mut()
}

unsafe extern "C" fn send(
    _module: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let args = Bound::from_borrowed_ptr(py, args);
    let Ok(args) = args.cast::<PyTuple>() else {
        return fail(ffi::PyExc_TypeError, "send(pid, term)");
    };
    if args.len() != 2 {
        return fail(ffi::PyExc_TypeError, "send(pid, term) takes 2 arguments");
    }
    let (Ok(pid), Ok(term)) = (args.get_item(0), args.get_item(1)) else {
        return fail(ffi::PyExc_TypeError, "send(pid, term)");
    };
    let env = OwnedEnv::new();
    let mut to: Option<LocalPid> = None;
    let saved = env.run(|e| -> std::result::Result<_, String> {
        let pid = py_to_pid(e, &pid).ok_or("send: the first argument must be a Pid")?;
        to = pid.decode::<LocalPid>().ok();
        let message = convert::py_to_term(e, &term).map_err(|err| format!("{err:?}"))?;
        Ok(env.save(message))
    });
    let (saved, to) = match (saved, to) {
        (Ok(saved), Some(to)) => (saved, to),
        (Err(message), _) => return fail(ffi::PyExc_TypeError, &message),
        _ => return fail(ffi::PyExc_TypeError, "send: bad pid"),
    };
    if mailer::on_scheduler_thread() {
        mailer::post(mailer::Mail::Term {
            env,
            to,
            term: saved,
        });
    } else {
        let mut env = env;
        if env.send_and_clear(&to, |e| saved.load(e)).is_err() {
            return fail(ffi::PyExc_RuntimeError, "the process is not alive");
        }
    }
    let none = ffi::Py_None();
    ffi::Py_INCREF(none);
    none
}

unsafe extern "C" fn log(
    _module: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let args = Bound::from_borrowed_ptr(py, args);
    let parsed = (|| -> PyResult<(u32, String, String, String, Option<String>)> {
        let args = args.cast::<PyTuple>()?;
        let pool = match args.get_item(4) {
            Ok(p) if !p.is_none() => Some(p.extract()?),
            _ => None,
        };
        Ok((
            args.get_item(0)?.extract()?,
            args.get_item(1)?.extract()?,
            args.get_item(2)?.extract()?,
            args.get_item(3)?.extract()?,
            pool,
        ))
    })();
    match parsed {
        Ok((level, logger, message, thread, pool)) => {
            mailer::post(mailer::Mail::Log {
                level,
                logger,
                message,
                thread,
                pool,
            });
            let none = ffi::Py_None();
            ffi::Py_INCREF(none);
            none
        }
        Err(_) => fail(
            ffi::PyExc_TypeError,
            "log(level, logger, message, thread, pool=None)",
        ),
    }
}
