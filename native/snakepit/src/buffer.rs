//! Large binaries without copies (README, "Large data"; docs/architecture.md, "Large data").
//!
//! Erlang -> Python: `{:buffer, binary}` becomes a read-only `memoryview` over an [`ErlBuffer`],
//! which keeps the binary alive in its own process-independent environment (`enif_make_copy` of
//! a refc binary only bumps its reference count). Dropping it frees that environment: no
//! scheduler and no GIL involved.
//!
//! Python -> Erlang: `bytes` of [`ZERO_COPY_MIN`] or more, and read-only memoryviews over
//! `bytes` or an [`ErlBuffer`], become resource binaries that own the Python object
//! ([`PyHeld`]). The BEAM frees them on a scheduler, which must never wait for the GIL, so
//! their drop hands the object to the release thread ([`release`]), which attaches to Python
//! and drops whatever has queued up.

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};
use rustler::env::SavedTerm;
use rustler::{Binary, Env, NewBinary, OwnedEnv, ResourceArc, Term};

use crate::error::{Error, Result};

/// Results from this size up cross as resource binaries; smaller ones are copied (a copy of
/// a few KiB costs less than a resource and a later release hand-off).
pub const ZERO_COPY_MIN: usize = 64 * 1024;

/// An Erlang binary seen from Python through the buffer protocol (read-only).
#[pyclass(name = "ErlBuffer", module = "snakepit_bridge", frozen)]
pub struct ErlBuffer {
    held: HeldBinary,
}

/// The environment that keeps the binary alive and where its bytes are. Only ever read after
/// construction; dropped as a whole.
struct HeldBinary {
    _env: OwnedEnv,
    _term: SavedTerm,
    ptr: *const u8,
    len: usize,
}

// The bytes are immutable and the environment is only freed by the drop.
unsafe impl Send for HeldBinary {}
unsafe impl Sync for HeldBinary {}

impl HeldBinary {
    fn new(bin: Term<'_>) -> Result<Self> {
        let env = OwnedEnv::new();
        let saved = env.save(bin);
        let (ptr, len) = env.run(|e| {
            Binary::from_term(saved.load(e))
                .map(|b| (b.as_slice().as_ptr(), b.len()))
                .map_err(|_| Error::conversion("{:buffer, _} needs a binary"))
        })?;
        Ok(HeldBinary {
            _env: env,
            _term: saved,
            ptr,
            len,
        })
    }
}

#[pymethods]
impl ErlBuffer {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "an Erlang binary is read-only (copy it with bytearray(view) to change it)",
            ));
        }
        let held = &slf.get().held;
        let rc = ffi::PyBuffer_FillInfo(
            view,
            slf.as_ptr(),
            held.ptr as *mut std::ffi::c_void,
            held.len as ffi::Py_ssize_t,
            1,
            flags,
        );
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.held.len
    }

    fn __repr__(&self) -> String {
        format!("<ErlBuffer of {} bytes>", self.held.len)
    }
}

/// A read-only `memoryview` over the binary `bin` (no copy).
pub fn memoryview<'py>(py: Python<'py>, bin: Term<'_>) -> Result<Bound<'py, PyAny>> {
    let buffer = Bound::new(
        py,
        ErlBuffer {
            held: HeldBinary::new(bin)?,
        },
    )
    .map_err(|e| Error::from_py(py, e))?;
    PyMemoryView::from(buffer.as_any())
        .map(|m| m.into_any())
        .map_err(|e| Error::from_py(py, e))
}

// ---------------------------------------------------------------------------------------------
// Python -> Erlang
// ---------------------------------------------------------------------------------------------

/// What a resource binary's bytes belong to: a Python object, or a copy made here (freed on
/// the release thread too: unmapping tens of MB takes milliseconds).
// The fields are never read: an owner is only held, then dropped on the release thread.
#[allow(dead_code)]
enum Owner {
    Python(Py<PyAny>),
    Copy(Copied),
}

/// A copy made for a binary, in a buffer of spare.rs (at least as long as the binary); given
/// back as a spare when dropped (on the release thread).
struct Copied(Vec<u8>);

impl Drop for Copied {
    fn drop(&mut self) {
        crate::spare::give(std::mem::take(&mut self.0));
    }
}

/// The owner of the bytes a resource binary points at.
pub struct PyHeld {
    obj: Option<Owner>,
    ptr: *const u8,
    len: usize,
}

// The owner is only dropped (by the release thread); the bytes are immutable while it lives
// (a Vec's heap buffer does not move when the Vec does).
unsafe impl Send for PyHeld {}
unsafe impl Sync for PyHeld {}

#[rustler::resource_impl]
impl rustler::Resource for PyHeld {}

impl Drop for PyHeld {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            release(obj);
        }
    }
}

/// Hands `obj` to the release thread (release.rs): never blocks, never touches the GIL.
fn release(obj: Owner) {
    match obj {
        Owner::Python(_) => crate::release::python(obj, Some(&RELEASED)),
        Owner::Copy(_) => crate::release::plain(obj, Some(&RELEASED)),
    }
}

/// How many owners the release thread has dropped (for tests and stats).
pub static RELEASED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `bytes` as a binary: a resource binary that owns it from [`ZERO_COPY_MIN`] up, else a copy.
pub fn bytes_to_term<'a>(env: Env<'a>, bytes: &Bound<'_, PyBytes>) -> Term<'a> {
    let slice = bytes.as_bytes();
    if slice.len() < ZERO_COPY_MIN {
        return copy_to_term(env, slice);
    }
    held_binary(env, bytes.as_any(), slice)
}

/// A memoryview result as a binary: zero-copy when it is read-only and over `bytes` or an
/// Erlang binary (nobody can change those bytes), else one copy, straight from the buffer.
pub fn memoryview_to_term<'a>(env: Env<'a>, view: &Bound<'_, PyAny>) -> Result<Term<'a>> {
    // Held through its base object: a memoryview can be release()d while a binary still
    // points into it, its base cannot.
    let base = view
        .getattr("obj")
        .ok()
        .filter(|o| o.is_instance_of::<PyBytes>() || o.is_instance_of::<ErlBuffer>());
    view_to_term(env, view, base.as_ref())
}

/// A buffer-protocol object's bytes as a binary. `owner`: an object the caller knows keeps the
/// bytes alive and unchanged (not a memoryview, which can be released), so a C-contiguous
/// read-only buffer of [`ZERO_COPY_MIN`] or more becomes a resource binary that owns it;
/// otherwise one copy.
pub fn view_to_term<'a>(
    env: Env<'a>,
    obj: &Bound<'_, PyAny>,
    owner: Option<&Bound<'_, PyAny>>,
) -> Result<Term<'a>> {
    let py = obj.py();
    let buf = match pyo3::buffer::PyBuffer::<u8>::get(obj) {
        Ok(buf) => buf,
        // Not a byte-format buffer (say, of doubles): read it as raw bytes.
        Err(_) => {
            let view = PyMemoryView::from(obj).map_err(|e| Error::from_py(py, e))?;
            let raw = view
                .call_method1("cast", ("B",))
                .map_err(|e| Error::from_py(py, e))?;
            return view_to_term(env, &raw, owner);
        }
    };
    let len = buf.len_bytes();
    if let Some(owner) = owner {
        if len >= ZERO_COPY_MIN && buf.readonly() && buf.is_c_contiguous() {
            let slice = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, len) };
            return Ok(held_binary(env, owner, slice));
        }
    }
    if len >= ZERO_COPY_MIN {
        // Into a spare buffer whose pages are mapped already, when one fits (spare.rs).
        let mut copy = crate::spare::take(len);
        buf.copy_to_slice(py, &mut copy[..len])
            .map_err(|e| Error::from_py(py, e))?;
        return Ok(owned_binary(env, Copied(copy), len));
    }
    let mut bin = NewBinary::new(env, len);
    buf.copy_to_slice(py, bin.as_mut_slice())
        .map_err(|e| Error::from_py(py, e))?;
    Ok(Binary::from(bin).to_term(env))
}

pub fn copy_to_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut bin = NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    Binary::from(bin).to_term(env)
}

/// A resource binary over `slice`, which must stay valid while `owner` lives.
fn held_binary<'a>(env: Env<'a>, owner: &Bound<'_, PyAny>, slice: &[u8]) -> Term<'a> {
    resource_binary(
        env,
        Owner::Python(owner.clone().unbind()),
        slice.as_ptr(),
        slice.len(),
    )
}

/// A resource binary over a copy made here.
fn owned_binary<'a>(env: Env<'a>, copy: Copied, len: usize) -> Term<'a> {
    let ptr = copy.0.as_ptr();
    resource_binary(env, Owner::Copy(copy), ptr, len)
}

fn resource_binary<'a>(env: Env<'a>, owner: Owner, ptr: *const u8, len: usize) -> Term<'a> {
    // Start the release thread here, on a pool thread, rather than in the first destructor
    // (which usually runs on a scheduler).
    crate::release::start();
    let held = ResourceArc::new(PyHeld {
        obj: Some(owner),
        ptr,
        len,
    });
    held.make_binary(env, |h| {
        if h.len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(h.ptr, h.len) }
        }
    })
    .to_term(env)
}
