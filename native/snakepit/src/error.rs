//! One error type for everything that can fail inside the NIF. It is encoded as the map that
//! `Snakepit.Error.from_native/1` turns into a `%Snakepit.Error{}`.

use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyTracebackMethods, PyTypeMethods};
#[cfg(feature = "nif")]
use rustler::{Encoder, Env, Term};

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

    #[cfg(feature = "nif")]
    /// The map sent to Elixir: `%{category:, message:, python_type:, python_traceback:, details:}`.
    pub fn to_term<'a>(&self, env: Env<'a>) -> Term<'a> {
        let nil = atoms::nil().encode(env);
        let (python_type, traceback) = match self {
            Error::Python {
                python_type,
                traceback,
                ..
            } => (
                python_type.encode(env),
                traceback.as_ref().map_or(nil, |t| t.encode(env)),
            ),
            _ => (nil, nil),
        };
        let details = match self {
            Error::Validation { available, .. } if !available.is_empty() => Term::map_from_pairs(
                env,
                &[(atoms::available().encode(env), available.encode(env))],
            )
            .unwrap_or(nil),
            Error::Saturated { max_queue, .. } => Term::map_from_pairs(
                env,
                &[
                    (atoms::reason().encode(env), atoms::saturated().encode(env)),
                    (atoms::max_queue().encode(env), max_queue.encode(env)),
                ],
            )
            .unwrap_or(nil),
            _ => Term::map_new(env),
        };
        let keys = [
            atoms::category().encode(env),
            atoms::message().encode(env),
            atoms::python_type().encode(env),
            atoms::python_traceback().encode(env),
            atoms::details().encode(env),
        ];
        let values = [
            self.category().encode(env),
            self.message().encode(env),
            python_type,
            traceback,
            details,
        ];
        Term::map_from_term_arrays(env, &keys, &values).unwrap_or(nil)
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
