//! Object references (`%Snakepit.Ref{}`; README, "Python objects and eval";
//! docs/architecture.md, "Object references").
//!
//! In the `:thread` profile a ref's `resource` field is a [`PyObjectRef`]: a NIF resource that
//! owns one strong reference to a Python object of the node's interpreter. A Python value marked
//! with `snakepit_bridge.ref(obj)` (a `snakepit_bridge._refs.Ref`) becomes such a struct when it
//! is converted to a term ([`marker_to_term`]); the struct anywhere inside a later call's
//! arguments converts back to the object itself ([`struct_to_py`]).
//!
//! Lifetime: the resource's destructor runs on whatever thread the BEAM garbage-collects on
//! (a scheduler). It never touches Python: it moves the object into a channel, and the
//! release thread (release.rs), attached to Python, drops what arrives. `release/1` does the
//! same early. On a free-threaded build nothing here relies on the GIL: the object sits behind
//! a mutex and is only cloned or dropped while attached.
//!
//! In the `:process` profile the object lives in a worker's table; its ref carries a
//! [`RefWatch`] whose destructor posts a message to the pool's process (which tells the worker
//! to drop the id), through the mail thread since destructors may run on schedulers.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use rustler::env::SavedTerm;
use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use std::sync::Mutex;

use crate::atoms;
use crate::error::{Error, Result};
use crate::mailer;

/// A Python object owned by a `%Snakepit.Ref{}` (`:thread` profile).
pub struct PyObjectRef {
    obj: Mutex<Option<Py<PyAny>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for PyObjectRef {}

impl Drop for PyObjectRef {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            release_later(obj);
        }
    }
}

/// A std mutex (resources must be unwind-safe) that shrugs off poisoning.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static CREATED: AtomicU64 = AtomicU64::new(0);
static RELEASED: AtomicU64 = AtomicU64::new(0);

/// `(created, released)`: refs made so far and Python objects they let go of.
pub fn counts() -> (u64, u64) {
    (
        CREATED.load(Ordering::Relaxed),
        RELEASED.load(Ordering::Relaxed),
    )
}

impl PyObjectRef {
    fn new(obj: Py<PyAny>) -> Self {
        CREATED.fetch_add(1, Ordering::Relaxed);
        PyObjectRef {
            obj: Mutex::new(Some(obj)),
        }
    }

    /// Lets go of the object now (`Snakepit.release/1`): false if it was already released.
    pub fn release(&self) -> bool {
        let taken = lock(&self.obj).take();
        match taken {
            Some(obj) => {
                release_later(obj);
                true
            }
            None => false,
        }
    }

    fn object<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        match &*lock(&self.obj) {
            Some(obj) => Ok(obj.bind(py).clone()),
            None => Err(Error::conversion(
                "the Snakepit.Ref was released (Snakepit.release/1): its Python object is gone",
            )),
        }
    }
}

/// Queues a Python object for the release thread (release.rs): never blocks, never touches
/// Python.
fn release_later(obj: Py<PyAny>) {
    crate::release::python(obj, Some(&RELEASED));
}

thread_local! {
    /// The pool this thread serves, named in the refs it makes.
    static POOL: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Called by each pool thread as it starts.
pub fn set_thread_pool(name: &str) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.as_deref() != Some(name) {
            *p = Some(name.to_string());
        }
    });
}

/// `snakepit_bridge._refs.Ref`, the marker of a value that crosses as a ref.
fn marker_class(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    CLASS.import(py, "snakepit_bridge._refs", "Ref").ok()
}

/// Python -> Erlang hook: `Some(struct)` when `obj` is a ref marker, `None` otherwise.
pub fn marker_to_term<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>) -> Option<Result<Term<'a>>> {
    let py = obj.py();
    let class = marker_class(py)?;
    if !obj.is_instance(class).unwrap_or(false) {
        return None;
    }
    Some((|| {
        let target = obj.getattr("obj").map_err(|e| Error::from_py(py, e))?;
        let ty: String = obj
            .getattr("type")
            .and_then(|t| t.extract())
            .unwrap_or_else(|_| "object".into());
        let repr: String = obj
            .getattr("repr")
            .and_then(|t| t.extract())
            .unwrap_or_default();
        let resource = ResourceArc::new(PyObjectRef::new(target.unbind()));
        let pool = POOL.with(|p| p.borrow().clone());
        let pool = match pool {
            Some(name) => Atom::from_str(env, &name)
                .map(|a| a.encode(env))
                .unwrap_or_else(|_| atoms::nil().encode(env)),
            None => atoms::nil().encode(env),
        };
        ref_struct(env, resource.encode(env), pool, &ty, &repr)
    })())
}

fn ref_struct<'a>(
    env: Env<'a>,
    resource: Term<'a>,
    pool: Term<'a>,
    ty: &str,
    repr: &str,
) -> Result<Term<'a>> {
    let nil = atoms::nil().encode(env);
    let keys = [
        atoms::__struct__().encode(env),
        atoms::resource().encode(env),
        atoms::pool().encode(env),
        atoms::type_().encode(env),
        atoms::repr().encode(env),
        atoms::worker().encode(env),
        atoms::id().encode(env),
    ];
    let values = [
        atoms::ref_module().encode(env),
        resource,
        pool,
        ty.encode(env),
        repr.encode(env),
        nil,
        nil,
    ];
    Term::map_from_term_arrays(env, &keys, &values)
        .map_err(|_| Error::conversion("cannot build a Snakepit.Ref"))
}

/// Erlang -> Python hook: the object a `%Snakepit.Ref{}` (a map whose `__struct__` is
/// `Snakepit.Ref`) stands for.
pub fn struct_to_py<'py>(py: Python<'py>, term: Term<'_>) -> Result<Bound<'py, PyAny>> {
    let env = term.get_env();
    let resource = term
        .map_get(atoms::resource().encode(env))
        .map_err(|_| Error::conversion("malformed Snakepit.Ref: no resource"))?;
    match resource.decode::<ResourceArc<PyObjectRef>>() {
        Ok(r) => r.object(py),
        Err(_) => Err(Error::conversion(
            "this Snakepit.Ref has no object in this node's interpreter: it was made by a :process pool's worker (pass it to calls on that pool), or it went through another node (a NIF resource does not survive that)",
        )),
    }
}

/// A `:process` ref's guard: when the BEAM drops the last copy of the ref, `message` goes to
/// `to` (the pool's process), which tells the worker to drop the object.
pub struct RefWatch {
    mail: Mutex<Option<(OwnedEnv, SavedTerm)>>,
    to: LocalPid,
}

#[rustler::resource_impl]
impl rustler::Resource for RefWatch {}

impl RefWatch {
    pub fn new(to: LocalPid, message: Term<'_>) -> Self {
        let env = OwnedEnv::new();
        let saved = env.save(message);
        RefWatch {
            mail: Mutex::new(Some((env, saved))),
            to,
        }
    }

    /// Sends the message now (an explicit release); false if it was sent already.
    pub fn fire(&self) -> bool {
        match lock(&self.mail).take() {
            Some((env, term)) => {
                mailer::post(mailer::Mail::Term {
                    env,
                    to: self.to,
                    term,
                });
                true
            }
            None => false,
        }
    }
}

impl Drop for RefWatch {
    fn drop(&mut self) {
        self.fire();
    }
}

// ---------------------------------------------------------------------------------------------
// NIFs (stubs in `Snakepit.Native`; kept here, beside what they delegate to)
// ---------------------------------------------------------------------------------------------

/// `Snakepit.release/1` of a `:thread` ref: true if this call let the object go.
#[rustler::nif]
fn ref_release(resource: ResourceArc<PyObjectRef>) -> bool {
    resource.release()
}

/// `{created, released}` counters of `:thread` refs (tests and benchmarks).
#[rustler::nif]
fn ref_counts() -> (u64, u64) {
    counts()
}

/// A guard for a `:process` ref: `message` goes to `to` when it is garbage-collected or fired.
#[rustler::nif]
fn ref_watch(to: LocalPid, message: Term<'_>) -> ResourceArc<RefWatch> {
    ResourceArc::new(RefWatch::new(to, message))
}

/// Sends a guard's message now (`Snakepit.release/1` of a `:process` ref).
#[rustler::nif]
fn ref_watch_fire(watch: ResourceArc<RefWatch>) -> bool {
    watch.fire()
}
