//! The term mapping (README, "Terms and Python"; docs/architecture.md, Terms), both directions.
//!
//! Conversion is recursive with a hard depth limit ([`MAX_DEPTH`]): a deeper value is a
//! conversion error, never a stack overflow. Pool threads get stacks big enough for it.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PyMemoryView, PySet,
    PyString, PyTuple,
};
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, BigInt, Binary, Encoder, Env, LocalPid, NewBinary, Term, TermType};
use std::sync::OnceLock;

use crate::atoms;
use crate::error::{Error, Result};

/// How deep a nested value may be, in either direction.
pub const MAX_DEPTH: usize = 2_000;

/// An Erlang pid inside Python: opaque, comparable, hashable, and a target for `send`.
#[pyclass(name = "Pid", module = "snakepit_bridge", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyPid {
    pub pid: LocalPid,
}

#[pymethods]
impl PyPid {
    fn __repr__(&self) -> String {
        format!("Pid<{:x}>", self.raw())
    }
}

impl PyPid {
    fn raw(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.pid.hash(&mut h);
        h.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Erlang -> Python
// ---------------------------------------------------------------------------------------------

/// After this many containers (lists, tuples, dicts, sets) in one conversion, Python's cyclic
/// GC is paused until the conversion ends: otherwise it runs again and again over the objects
/// being built (a 64 MB nested map converted 2.5x slower with it).
const GC_PAUSE_AFTER: usize = 10_000;

thread_local! {
    static CONTAINERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static GC_PAUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// This thread serves a :subinterpreter worker (subinterp/): no object of the main
    /// interpreter (a `Pid`) may be made here.
    static SUBINTERPRETER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one that runs in a subinterpreter.
pub fn set_subinterpreter(on: bool) {
    SUBINTERPRETER.with(|s| s.set(on));
}

fn in_subinterpreter() -> bool {
    SUBINTERPRETER.with(|s| s.get())
}

const SUBINTERPRETER_HINT: &str =
    "in a :subinterpreter pool (objects never cross interpreters); use a :thread or :process pool";

/// Arguments a subinterpreter worker cannot take: refs (their objects live in the main
/// interpreter or another worker) and NDArrays/tensors (NumPy does not load there).
fn subinterpreter_struct(term: Term<'_>) -> Result<()> {
    let env = term.get_env();
    let Ok(tag) = term.map_get(atoms::__struct__().encode(env)) else {
        return Ok(());
    };
    let what = match tag.decode::<Atom>() {
        Ok(t) if t == atoms::ref_module() => "a %Snakepit.Ref{} cannot be used",
        Ok(t)
            if t == crate::ndarray::atoms::ndarray_module()
                || t == crate::ndarray::atoms::nx_tensor() =>
        {
            "an NDArray or Nx tensor needs NumPy, which cannot be imported"
        }
        _ => return Ok(()),
    };
    Err(Error::conversion(format!("{what} {SUBINTERPRETER_HINT}")))
}

/// Results a subinterpreter worker cannot give: refs (`return: :ref`, `snakepit_bridge.ref`).
/// Recognised by name: the class objects cached for the main interpreter must not be used here.
fn subinterpreter_result(obj: &Bound<'_, PyAny>) -> Result<()> {
    let ty = obj.get_type();
    let is_ref = ty.name().map(|n| n == "Ref").unwrap_or(false)
        && ty
            .module()
            .map(|m| m == "snakepit_bridge._refs")
            .unwrap_or(false);
    if is_ref {
        return Err(Error::conversion(format!(
            "object refs are not supported {SUBINTERPRETER_HINT}"
        )));
    }
    Ok(())
}

/// Converts a term to a Python object.
pub fn term_to_py<'py>(py: Python<'py>, term: Term<'_>) -> Result<Bound<'py, PyAny>> {
    CONTAINERS.with(|c| c.set(0));
    let result = to_py(py, term, 0);
    if GC_PAUSED.with(|p| p.replace(false)) {
        unsafe { pyo3::ffi::PyGC_Enable() };
    }
    result
}

/// Counts a container built by the current conversion; pauses the GC past the threshold
/// (and only if it was enabled: a user's `gc.disable()` stays as it was).
fn built_container() {
    let n = CONTAINERS.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n
    });
    if n == GC_PAUSE_AFTER && unsafe { pyo3::ffi::PyGC_Disable() } == 1 {
        GC_PAUSED.with(|p| p.set(true));
    }
}

fn too_deep() -> Error {
    Error::conversion(format!(
        "value nested deeper than {MAX_DEPTH} levels cannot be converted"
    ))
}

fn py_err(py: Python<'_>, err: PyErr) -> Error {
    // A Python failure while building a value (an unhashable key, say) is a conversion error.
    match Error::from_py(py, err) {
        Error::Python {
            python_type,
            message,
            ..
        } => Error::conversion(format!("{python_type}: {message}")),
        other => other,
    }
}

fn to_py<'py>(py: Python<'py>, term: Term<'_>, depth: usize) -> Result<Bound<'py, PyAny>> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match term.get_type() {
        TermType::Atom => atom_to_py(py, term),
        TermType::Integer => {
            if let Ok(i) = term.decode::<i64>() {
                Ok(pyo3::types::PyInt::new(py, i).into_any())
            } else {
                let big: BigInt = term
                    .decode()
                    .map_err(|_| Error::conversion("cannot decode integer"))?;
                bigint_to_py(py, &big)
            }
        }
        TermType::Float => {
            let f: f64 = term
                .decode()
                .map_err(|_| Error::conversion("cannot decode float"))?;
            Ok(PyFloat::new(py, f).into_any())
        }
        TermType::Binary => {
            let bin = Binary::from_term(term)
                .map_err(|_| Error::conversion("bitstrings that are not binaries cannot be converted"))?;
            binary_to_py(py, bin.as_slice())
        }
        TermType::List => {
            built_container();
            let list = PyList::empty(py);
            let mut tail = term;
            loop {
                match tail.list_get_cell() {
                    Ok((head, rest)) => {
                        list.append(to_py(py, head, depth + 1)?)
                            .map_err(|e| py_err(py, e))?;
                        tail = rest;
                    }
                    Err(_) if tail.is_empty_list() => break,
                    Err(_) => return Err(Error::conversion("improper lists cannot be converted")),
                }
            }
            Ok(list.into_any())
        }
        TermType::Tuple => {
            let elems = get_tuple(term).map_err(|_| Error::conversion("cannot decode tuple"))?;
            if elems.len() == 2 && elems[0].decode::<Atom>().ok() == Some(atoms::bytes()) {
                if let Ok(bin) = Binary::from_term(elems[1]) {
                    return Ok(PyBytes::new(py, bin.as_slice()).into_any());
                }
            }
            // {:buffer, binary}: a memoryview over it (buffer.rs); in a subinterpreter, over a
            // copy (buffer.rs's class belongs to the main interpreter).
            if elems.len() == 2
                && elems[0].decode::<Atom>().ok() == Some(atoms::buffer())
                && elems[1].is_binary()
            {
                if in_subinterpreter() {
                    let bin = Binary::from_term(elems[1])
                        .map_err(|_| Error::conversion("cannot decode binary"))?;
                    let bytes = PyBytes::new(py, bin.as_slice());
                    return PyMemoryView::from(bytes.as_any())
                        .map(|v| v.into_any())
                        .map_err(|e| py_err(py, e));
                }
                return crate::buffer::memoryview(py, elems[1]);
            }
            built_container();
            let items = elems
                .iter()
                .map(|t| to_py(py, *t, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            Ok(PyTuple::new(py, items)
                .map_err(|e| py_err(py, e))?
                .into_any())
        }
        TermType::Map => map_to_py(py, term, depth),
        // A worker's interpreter has its own Pid class (subinterp/native.rs).
        TermType::Pid if in_subinterpreter() => crate::subinterp::native::pid_to_py(py, term),
        TermType::Pid => {
            let pid: LocalPid = term
                .decode()
                .map_err(|_| Error::conversion("cannot decode pid"))?;
            Ok(Bound::new(py, PyPid { pid })
                .map_err(|e| py_err(py, e))?
                .into_any())
        }
        other => Err(Error::conversion(format!(
            "cannot convert {} to Python: only atoms, numbers, binaries, lists, tuples, maps, MapSets and pids cross",
            type_name(other)
        ))),
    }
}

fn type_name(t: TermType) -> &'static str {
    match t {
        TermType::Fun => "a function",
        TermType::Port => "a port",
        TermType::Ref => "a reference",
        _ => "this term",
    }
}

fn atom_to_py<'py>(py: Python<'py>, term: Term<'_>) -> Result<Bound<'py, PyAny>> {
    let atom: Atom = term
        .decode()
        .map_err(|_| Error::conversion("cannot decode atom"))?;
    if atom == atoms::nil() {
        Ok(py.None().into_bound(py))
    } else if atom == atoms::true_() {
        Ok(PyBool::new(py, true).to_owned().into_any())
    } else if atom == atoms::false_() {
        Ok(PyBool::new(py, false).to_owned().into_any())
    } else {
        let name = term
            .atom_to_string()
            .map_err(|_| Error::conversion("cannot decode atom"))?;
        Ok(PyString::new(py, &name).into_any())
    }
}

fn binary_to_py<'py>(py: Python<'py>, bytes: &[u8]) -> Result<Bound<'py, PyAny>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(PyString::new(py, s).into_any()),
        Err(_) => Ok(PyBytes::new(py, bytes).into_any()),
    }
}

/// Integers beyond 64 bits cross as bytes (pyo3's num-bigint conversion), never as decimal
/// text: CPython refuses `int(str)` and `str(int)` past 4,300 digits, and bytes are faster.
/// (rustler's `BigInt` is num-bigint 0.5, pyo3's 0.4: they meet as little-endian bytes.)
fn bigint_to_py<'py>(py: Python<'py>, big: &BigInt) -> Result<Bound<'py, PyAny>> {
    num_bigint::BigInt::from_signed_bytes_le(&big.to_signed_bytes_le())
        .into_pyobject(py)
        .map(|i| i.into_any())
        .map_err(|e| py_err(py, e))
}

fn map_to_py<'py>(py: Python<'py>, term: Term<'_>, depth: usize) -> Result<Bound<'py, PyAny>> {
    if in_subinterpreter() {
        subinterpreter_struct(term)?;
    }
    // %Snakepit.NDArray{}: a NumPy array over its binary (ndarray.rs).
    if let Some(array) = crate::ndarray::struct_to_py(py, term) {
        return array;
    }
    built_container();
    let env = term.get_env();
    // %MapSet{map: %{elem => _}} becomes a set of its elements.
    if let Ok(s) = term.map_get(atoms::__struct__().encode(env)) {
        if s.decode::<Atom>().ok() == Some(atoms::ref_module()) {
            return crate::refs::struct_to_py(py, term);
        }
        if s.decode::<Atom>().ok() == Some(atoms::mapset_module()) {
            let inner = term
                .map_get(atoms::map().encode(env))
                .map_err(|_| Error::conversion("malformed MapSet"))?;
            let set = PySet::empty(py).map_err(|e| py_err(py, e))?;
            for (k, _) in inner
                .decode::<rustler::MapIterator>()
                .map_err(|_| Error::conversion("malformed MapSet"))?
            {
                set.add(to_py(py, k, depth + 1)?)
                    .map_err(|e| py_err(py, e))?;
            }
            return Ok(set.into_any());
        }
    }
    let dict = PyDict::new(py);
    let iter =
        rustler::MapIterator::new(term).ok_or_else(|| Error::conversion("cannot decode map"))?;
    for (k, v) in iter {
        let key = to_py(py, k, depth + 1)?;
        let value = to_py(py, v, depth + 1)?;
        dict.set_item(key, value).map_err(|e| py_err(py, e))?;
    }
    Ok(dict.into_any())
}

// ---------------------------------------------------------------------------------------------
// Python -> Erlang
// ---------------------------------------------------------------------------------------------

/// Converts a Python object to a term in `env`.
pub fn py_to_term<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>) -> Result<Term<'a>> {
    to_term(env, obj, 0)
}

fn to_term<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>, depth: usize) -> Result<Term<'a>> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let py = obj.py();
    if obj.is_none() {
        return Ok(atoms::nil().encode(env));
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return str_to_term(env, s);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(b.is_true().encode(env));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(v.encode(env));
        }
        let big: num_bigint::BigInt = i.extract().map_err(|e| py_err(py, e))?;
        return Ok(BigInt::from_signed_bytes_le(&big.to_signed_bytes_le()).encode(env));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Ok(if v.is_nan() {
            atoms::nan().encode(env)
        } else if v.is_infinite() && v > 0.0 {
            atoms::infinity().encode(env)
        } else if v.is_infinite() {
            atoms::neg_infinity().encode(env)
        } else {
            v.encode(env)
        });
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return str_to_term(env, s);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        if in_subinterpreter() {
            // A resource binary would be released on a thread of the main interpreter.
            return Ok(crate::buffer::copy_to_term(env, b.as_bytes()));
        }
        return Ok(crate::buffer::bytes_to_term(env, b));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut terms = Vec::with_capacity(list.len());
        for item in list.iter() {
            terms.push(to_term(env, &item, depth + 1)?);
        }
        return Ok(terms.encode(env));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut terms = Vec::with_capacity(tuple.len());
        for item in tuple.iter() {
            terms.push(to_term(env, &item, depth + 1)?);
        }
        return Ok(make_tuple(env, &terms));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut keys = Vec::with_capacity(dict.len());
        let mut values = Vec::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            keys.push(to_term(env, &k, depth + 1)?);
            values.push(to_term(env, &v, depth + 1)?);
        }
        return map_from(env, &keys, &values);
    }
    if let Ok(set) = obj.cast::<PySet>() {
        let items = set.iter().collect::<Vec<_>>();
        return mapset(env, &items, depth);
    }
    if let Ok(set) = obj.cast::<PyFrozenSet>() {
        let items = set.iter().collect::<Vec<_>>();
        return mapset(env, &items, depth);
    }
    if in_subinterpreter() {
        if let Some(pid) = crate::subinterp::native::py_to_pid(env, obj) {
            return Ok(pid);
        }
    }
    if let Ok(pid) = obj.cast::<PyPid>() {
        return Ok(pid.get().pid.encode(env));
    }
    // bytearray and memoryview: one copy at most (buffer.rs); NDArray results (ndarray.rs).
    if obj.cast::<PyByteArray>().is_ok() {
        return crate::buffer::view_to_term(env, obj, None);
    }
    if in_subinterpreter() {
        // Only plain copies: the zero-copy paths, NDArray results and refs hold objects or
        // classes of the main interpreter (docs/architecture.md, "Subinterpreter workers").
        if obj.cast::<PyMemoryView>().is_ok() {
            return crate::buffer::view_to_term(env, obj, None);
        }
        subinterpreter_result(obj)?;
    } else {
        if obj.cast::<PyMemoryView>().is_ok() {
            return crate::buffer::memoryview_to_term(env, obj);
        }
        if let Some(term) = crate::ndarray::result_to_term(env, obj) {
            return term;
        }
        if let Some(r) = crate::refs::marker_to_term(env, obj) {
            return r;
        }
    }
    // Objects that describe themselves, then anything with tolist() (NumPy arrays and scalars).
    for method in ["__snakepit__", "tolist"] {
        if obj.hasattr(method).unwrap_or(false) {
            let converted = obj.call_method0(method).map_err(|e| py_err(py, e))?;
            if converted.is(obj) {
                break;
            }
            return to_term(env, &converted, depth + 1);
        }
    }
    let ty = obj
        .get_type()
        .fully_qualified_name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into());
    Err(Error::conversion(format!(
        "cannot convert Python object of type {ty} to an Erlang term (give it a __snakepit__() or tolist() method, or return plain data)"
    )))
}

fn str_to_term<'a>(env: Env<'a>, s: &Bound<'_, PyString>) -> Result<Term<'a>> {
    match s.to_str() {
        Ok(text) => Ok(bytes_to_term(env, text.as_bytes())),
        // Lone surrogates: encode them the way Python's "surrogatepass" would.
        Err(_) => {
            let py = s.py();
            let encoded = s
                .call_method1("encode", ("utf-8", "surrogatepass"))
                .map_err(|e| py_err(py, e))?;
            let bytes = encoded
                .cast::<PyBytes>()
                .map_err(|_| Error::conversion("str.encode did not return bytes"))?;
            Ok(bytes_to_term(env, bytes.as_bytes()))
        }
    }
}

fn bytes_to_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut bin = NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    Binary::from(bin).to_term(env)
}

/// Small maps (flatmaps, up to 32 keys) are built in one call. Bigger ones are built key by
/// key: `enif_make_map_from_arrays` sorts large key sets with scheduler-local scratch memory
/// and crashes the VM when called from a pool thread.
const FLATMAP_MAX: usize = 32;

fn map_from<'a>(env: Env<'a>, keys: &[Term<'a>], values: &[Term<'a>]) -> Result<Term<'a>> {
    let built = if keys.len() <= FLATMAP_MAX {
        Term::map_from_term_arrays(env, keys, values)
    } else {
        Err(rustler::Error::BadArg)
    };
    built.or_else(|_| {
        // Duplicate keys after conversion (e.g. 1 and 1.0 are distinct in Erlang but
        // True and 1 are not in Python): build it pairwise, last one wins.
        let mut map = Term::map_new(env);
        for (k, v) in keys.iter().zip(values) {
            map = map
                .map_put(*k, *v)
                .map_err(|_| Error::conversion("cannot build map"))?;
        }
        Ok(map)
    })
}

fn mapset<'a>(env: Env<'a>, items: &[Bound<'_, PyAny>], depth: usize) -> Result<Term<'a>> {
    let empty: Vec<Term<'a>> = Vec::new();
    let empty_list = empty.encode(env);
    let mut keys = Vec::with_capacity(items.len());
    for item in items {
        keys.push(to_term(env, item, depth + 1)?);
    }
    let values = vec![empty_list; keys.len()];
    let inner = map_from(env, &keys, &values)?;
    let mut struct_keys = vec![atoms::__struct__().encode(env), atoms::map().encode(env)];
    let mut struct_values = vec![atoms::mapset_module().encode(env), inner];
    for (field, value) in mapset_fields() {
        let field =
            Atom::from_str(env, field).map_err(|_| Error::conversion("bad MapSet field"))?;
        struct_keys.push(field.encode(env));
        struct_values.push(value.encode(env));
    }
    map_from(env, &struct_keys, &struct_values)
}

/// The fields of `%MapSet{}` besides `__struct__` and `map`, as this node's Elixir lays it out
/// (`[{"version", 2}]` on Elixir 1.14, none on 1.15 and later), so that a set built here is
/// `==` to one built by `MapSet.new/1`. `Snakepit.Runtime.native_config/0` reads them off a
/// real MapSet; the elements map to `[]` in every version.
static MAPSET_FIELDS: OnceLock<Vec<(String, i64)>> = OnceLock::new();

pub fn set_mapset_fields(fields: &[(String, i64)]) {
    let _ = MAPSET_FIELDS.set(fields.to_vec());
}

fn mapset_fields() -> &'static [(String, i64)] {
    MAPSET_FIELDS.get().map_or(&[], |f| f.as_slice())
}

/// A Python TypeError for use by Python-facing functions.
pub fn to_py_err(err: Error) -> PyErr {
    PyTypeError::new_err(err.to_string())
}
