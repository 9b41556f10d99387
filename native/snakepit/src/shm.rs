//! Large results of the `:process` profile through shared memory (docs/architecture.md,
//! "Large data"): a worker writes the bytes into a fresh file of the shm directory, the pool
//! process maps it here and gets a resource binary over the mapping (no copy). The file is
//! unlinked as soon as it is open (its pages live while mapped); the mapping is unmapped on
//! the release thread (release.rs) when the BEAM frees the binary (unmapping tens of MB takes
//! milliseconds, too long for a scheduler).

use std::ffi::CString;

use rustler::{Binary, Encoder, Env, ResourceArc, Term};

use crate::atoms;

/// A read-only shared mapping of `len` bytes at `ptr` (none when `len` is 0).
pub struct Mapped {
    ptr: usize,
    len: usize,
}

#[rustler::resource_impl]
impl rustler::Resource for Mapped {}

/// The region itself; unmapped when dropped (on the release thread).
struct Region(usize, usize);

impl Drop for Region {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.0 as *mut libc::c_void, self.1);
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len != 0 {
            crate::release::plain(Region(self.ptr, self.len), None);
        }
    }
}

/// Opens `path`, unlinks it, maps it read-only. The file is unlinked whatever happens.
fn map_file(path: &[u8]) -> std::result::Result<Mapped, String> {
    let cpath = CString::new(path).map_err(|_| "a NUL byte in the path".to_string())?;
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open: {}", std::io::Error::last_os_error()));
    }
    unsafe { libc::unlink(cpath.as_ptr()) };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let result = if unsafe { libc::fstat(fd, &mut st) } != 0 {
        Err(format!("fstat: {}", std::io::Error::last_os_error()))
    } else if st.st_size == 0 {
        Ok(Mapped { ptr: 0, len: 0 })
    } else {
        let len = st.st_size as usize;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            Err(format!("mmap: {}", std::io::Error::last_os_error()))
        } else {
            Ok(Mapped {
                ptr: ptr as usize,
                len,
            })
        }
    };
    unsafe { libc::close(fd) };
    result
}

/// `{:ok, binary}` over the mapping of the file at `path` (unlinked), or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyIo")]
fn shm_map<'a>(env: Env<'a>, path: Binary<'a>) -> Term<'a> {
    match map_file(path.as_slice()) {
        Ok(mapped) => {
            crate::release::start();
            let held = ResourceArc::new(mapped);
            let bin = held.make_binary(env, |m| {
                if m.len == 0 {
                    &[]
                } else {
                    unsafe { std::slice::from_raw_parts(m.ptr as *const u8, m.len) }
                }
            });
            (atoms::ok(), bin).encode(env)
        }
        Err(reason) => (rustler::types::atom::error(), reason).encode(env),
    }
}
