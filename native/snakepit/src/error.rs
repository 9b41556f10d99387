//! One error type for everything that can fail inside the NIF. It is encoded as the map that
//! `Snakepit.Error.from_native/1` turns into a `%Snakepit.Error{}`.

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyTracebackMethods, PyTypeMethods};
#[cfg(feature = "nif")]
use rustler::{Atom, Encoder, Env, NifMap, Term};

#[cfg(feature = "nif")]
use crate::atoms;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// An exception raised by Python code.
    Python {
        python_type: String,
        message: String,
        traceback: Option<String>,
    },
    /// A value that cannot cross between Erlang and Python.
    Conversion(String),
    /// Bad input: an unknown command (with the commands there are), bad config.
    Validation {
        message: String,
        available: Vec<String>,
    },
    /// The pool is stopped or unknown.
    Pool(String),
    /// The pool's queue is full (back-pressure).
    Saturated { message: String, max_queue: usize },
    /// The worker could not run the job (internal failure, start-up failure).
    Worker(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn conversion(message: impl Into<String>) -> Self {
        Error::Conversion(message.into())
    }

    /// Captures a Python exception with its qualified type name, message and full traceback,
    /// through `snakepit_bridge._dispatch.exception_info` (as the `:process` worker does), or
    /// in Rust when that cannot run (the package not importable yet).
    pub fn from_py(py: Python<'_>, err: PyErr) -> Self {
        let value = err.value(py);
        if let Some(e) = unknown_command(py, value) {
            return e;
        }
        if let Ok((python_type, message, traceback)) = py
            .import("snakepit_bridge._dispatch")
            .and_then(|m| {
                m.getattr("exception_info")?
                    .call1((value, err.traceback(py)))
            })
            .and_then(|info| info.extract::<(String, String, String)>())
        {
            return Error::Python {
                python_type,
                message,
                traceback: Some(traceback),
            };
        }
        let ty = value.get_type();
        let qualname = ty
            .qualname()
            .map(|q| q.to_string())
            .unwrap_or_else(|_| "Exception".into());
        let python_type = match ty.module().map(|m| m.to_string()) {
            Ok(module) if module != "builtins" => format!("{module}.{qualname}"),
            _ => qualname,
        };
        let message = value
            .str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "<exception str() failed>".into());
        let traceback = format_exception(py, &err).or_else(|| {
            err.traceback(py)
                .and_then(|tb| tb.format().ok())
                .map(|tb| format!("{tb}{python_type}: {message}\n"))
        });
        Error::Python {
            python_type,
            message,
            traceback,
        }
    }

    #[cfg(feature = "nif")]
    pub fn category(&self) -> rustler::Atom {
        match self {
            Error::Python { .. } => atoms::python_error(),
            Error::Conversion(_) => atoms::conversion(),
            Error::Validation { .. } => atoms::validation(),
            Error::Pool(_) | Error::Saturated { .. } => atoms::pool(),
            Error::Worker(_) => atoms::worker(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Python { message, .. } => message,
            Error::Conversion(m) | Error::Pool(m) | Error::Worker(m) => m,
            Error::Validation { message, .. } | Error::Saturated { message, .. } => message,
        }
    }
}

/// `"".join(traceback.format_exception(err))`, or None when that itself fails.
fn format_exception(py: Python<'_>, err: &PyErr) -> Option<String> {
    let tb = py.import("traceback").ok()?;
    let value = err.value(py);
    let lines = tb
        .call_method1(
            "format_exception",
            (value.get_type(), value, err.traceback(py)),
        )
        .ok()?;
    let joined = pyo3::types::PyString::new(py, "")
        .call_method1("join", (lines,))
        .ok()?;
    joined.extract::<String>().ok()
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Python {
                python_type,
                message,
                ..
            } => write!(f, "{python_type}: {message}"),
            other => f.write_str(other.message()),
        }
    }
}

/// The map an `Error` is encoded as: `%{category:, message:, python_type:, python_traceback:,
/// details:}` (`Snakepit.Error.from_native/1` reads it).
#[cfg(feature = "nif")]
#[derive(NifMap)]
#[rustler(encode)]
struct ErrorMap<'e> {
    category: Atom,
    message: &'e str,
    python_type: Option<&'e str>,
    python_traceback: Option<&'e str>,
    details: Details<'e>,
}

/// `details`: `%{available: [...]}` for an unknown command, `%{reason: :saturated, max_queue:}`
/// for a full queue, `%{}` otherwise.
#[cfg(feature = "nif")]
enum Details<'e> {
    Available(Available<'e>),
    Saturated(Saturated),
    None,
}

#[cfg(feature = "nif")]
#[derive(NifMap)]
#[rustler(encode)]
struct Available<'e> {
    available: &'e [String],
}

#[cfg(feature = "nif")]
#[derive(NifMap)]
#[rustler(encode)]
struct Saturated {
    reason: Atom,
    max_queue: usize,
}

#[cfg(feature = "nif")]
impl Encoder for Details<'_> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Details::Available(d) => d.encode(env),
            Details::Saturated(d) => d.encode(env),
            Details::None => Term::map_new(env),
        }
    }
}

#[cfg(feature = "nif")]
impl Encoder for Error {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let (python_type, python_traceback) = match self {
            Error::Python {
                python_type,
                traceback,
                ..
            } => (Some(python_type.as_str()), traceback.as_deref()),
            _ => (None, None),
        };
        let details = match self {
            Error::Validation { available, .. } if !available.is_empty() => {
                Details::Available(Available { available })
            }
            Error::Saturated { max_queue, .. } => Details::Saturated(Saturated {
                reason: atoms::saturated(),
                max_queue: *max_queue,
            }),
            _ => Details::None,
        };
        ErrorMap {
            category: self.category(),
            message: self.message(),
            python_type,
            python_traceback,
            details,
        }
        .encode(env)
    }
}

/// `snakepit_bridge._dispatch.UnknownCommand` (raised by `__snakepit_call__`) is the same
/// `:validation` error as a plain unknown command.
fn unknown_command(py: Python<'_>, value: &Bound<'_, PyBaseException>) -> Option<Error> {
    let class = py
        .import("snakepit_bridge._dispatch")
        .and_then(|m| m.getattr("UnknownCommand"))
        .ok()?;
    if !value.is_instance(&class).unwrap_or(false) {
        return None;
    }
    Some(Error::Validation {
        message: value.str().ok()?.to_string(),
        available: value.getattr("available").ok()?.extract().ok()?,
    })
}
