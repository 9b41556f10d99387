//! `%Snakepit.NDArray{}` <-> NumPy (README, "Large data"; docs/architecture.md, "Large data").
//!
//! Erlang -> Python: the struct's binary becomes a read-only memoryview (see `buffer.rs`), and
//! `snakepit_bridge._ndarray.from_parts` makes the array over it with `numpy.frombuffer`: no
//! copy. Python -> Erlang: `snakepit_bridge._ndarray.NDArrayResult` (what the `ndarray:
//! :struct` option wraps arrays in) becomes the struct; its bytes cross without a copy when
//! nothing in Python can change them, else with one.

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, Encoder, Env, Term};

use crate::buffer;
use crate::error::{Error, Result};

pub(crate) mod atoms {
    rustler::atoms! {
        __struct__, data, dtype, shape, type_ = "type", state,
        ndarray_module = "Elixir.Snakepit.NDArray",
        nx_tensor = "Elixir.Nx.Tensor",
        nx_binary_backend = "Elixir.Nx.BinaryBackend",
    }
}

/// `Some(array)` when `term` is a `%Snakepit.NDArray{}` or an `%Nx.Tensor{}` (a map whose
/// `__struct__` is one of them).
pub fn struct_to_py<'py>(py: Python<'py>, term: Term<'_>) -> Option<Result<Bound<'py, PyAny>>> {
    let env = term.get_env();
    let tag = term.map_get(atoms::__struct__().encode(env)).ok()?;
    let tag = tag.decode::<Atom>().ok()?;
    if tag == atoms::ndarray_module() {
        Some(to_numpy(py, term, atoms::dtype(), "%Snakepit.NDArray{}"))
    } else if tag == atoms::nx_tensor() {
        Some(to_numpy(py, term, atoms::type_(), "%Nx.Tensor{}"))
    } else {
        None
    }
}

/// The bytes of an `%Nx.Tensor{}`'s data: only the binary backend's are in the term.
fn tensor_bytes<'a>(data: Term<'a>) -> Result<Term<'a>> {
    let env = data.get_env();
    let backend = data
        .map_get(atoms::__struct__().encode(env))
        .ok()
        .and_then(|b| b.decode::<Atom>().ok());
    match backend {
        Some(b) if b == atoms::nx_binary_backend() => data
            .map_get(atoms::state().encode(env))
            .map_err(|_| Error::conversion("malformed Nx.BinaryBackend")),
        _ => Err(Error::conversion(
            "an %Nx.Tensor{} crosses from Nx.BinaryBackend only: Nx.backend_transfer(tensor, Nx.BinaryBackend) first",
        )),
    }
}

fn to_numpy<'py>(
    py: Python<'py>,
    term: Term<'_>,
    dtype_key: Atom,
    what: &str,
) -> Result<Bound<'py, PyAny>> {
    let env = term.get_env();
    let field = |name: Atom| {
        term.map_get(name.encode(env))
            .map_err(|_| Error::conversion(format!("malformed {what}")))
    };
    let data = field(atoms::data())?;
    let data = if dtype_key == atoms::type_() {
        tensor_bytes(data)?
    } else {
        data
    };
    let (kind, bits): (Atom, u32) = field(dtype_key)?.decode().map_err(|_| {
        Error::conversion(format!("{what} dtype must be a tuple such as {{:f, 64}}"))
    })?;
    let shape_term = field(atoms::shape())?;
    let shape: Vec<i64> = get_tuple(shape_term)
        .map_err(|_| Error::conversion(format!("{what} shape must be a tuple of sizes")))?
        .iter()
        .map(|t| t.decode::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::conversion(format!("{what} shape must be a tuple of sizes")))?;
    let kind = kind
        .to_term(env)
        .atom_to_string()
        .map_err(|_| Error::conversion("bad dtype"))?;
    let view = buffer::memoryview(py, data)?;
    let shape = PyTuple::new(py, shape).map_err(|e| Error::from_py(py, e))?;
    bridge(py)?
        .getattr("from_parts")
        .and_then(|f| f.call1((view, (kind, bits), shape)))
        .map_err(|e| conversion(py, e))
}

fn conversion(py: Python<'_>, e: PyErr) -> Error {
    match Error::from_py(py, e) {
        Error::Python {
            python_type,
            message,
            ..
        } => Error::conversion(format!("{python_type}: {message}")),
        other => other,
    }
}

static BRIDGE: OnceLock<Py<PyModule>> = OnceLock::new();
static RESULT_TYPE: OnceLock<Py<PyType>> = OnceLock::new();

fn bridge(py: Python<'_>) -> Result<&Bound<'_, PyModule>> {
    if BRIDGE.get().is_none() {
        let module = py
            .import("snakepit_bridge._ndarray")
            .map_err(|e| Error::from_py(py, e))?;
        let _ = BRIDGE.set(module.unbind());
    }
    Ok(BRIDGE.get().expect("set above").bind(py))
}

/// `Some(struct)` when `obj` is a `snakepit_bridge._ndarray.NDArrayResult`.
pub fn result_to_term<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>) -> Option<Result<Term<'a>>> {
    let py = obj.py();
    let ty = match RESULT_TYPE.get() {
        Some(ty) => ty.bind(py),
        None => {
            // Only modules that made an NDArrayResult have imported it.
            let module = py
                .import("sys")
                .ok()?
                .getattr("modules")
                .ok()?
                .get_item("snakepit_bridge._ndarray")
                .ok()?;
            let ty = module
                .getattr("NDArrayResult")
                .ok()?
                .cast_into::<PyType>()
                .ok()?;
            let _ = RESULT_TYPE.set(ty.unbind());
            RESULT_TYPE.get().expect("set above").bind(py)
        }
    };
    if !obj.get_type().is(ty) {
        return None;
    }
    Some(result_struct(env, obj))
}

fn result_struct<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>) -> Result<Term<'a>> {
    let py = obj.py();
    let get = |name: &str| obj.getattr(name).map_err(|e| conversion(py, e));
    let (kind, bits): (String, u32) = get("dtype")?.extract().map_err(|e| conversion(py, e))?;
    let shape: Vec<i64> = get("shape")?.extract().map_err(|e| conversion(py, e))?;
    // `owner`: the array, when nothing in Python can change its bytes (see _ndarray.py).
    let owner = get("owner")?;
    let owner = (!owner.is_none()).then_some(owner);
    let data = buffer::view_to_term(env, &get("data")?, owner.as_ref())?;
    let kind = Atom::from_str(env, &kind).map_err(|_| Error::conversion("bad dtype"))?;
    let shape_terms: Vec<Term<'a>> = shape.iter().map(|s| s.encode(env)).collect();
    let keys = [
        atoms::__struct__().encode(env),
        atoms::data().encode(env),
        atoms::dtype().encode(env),
        atoms::shape().encode(env),
    ];
    let values = [
        atoms::ndarray_module().encode(env),
        data,
        (kind, bits).encode(env),
        make_tuple(env, &shape_terms),
    ];
    Term::map_from_term_arrays(env, &keys, &values)
        .map_err(|_| Error::conversion("cannot build %Snakepit.NDArray{}"))
}
