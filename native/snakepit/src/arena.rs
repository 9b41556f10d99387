//! Shared-memory arenas of the `:process` profile (docs/architecture.md, "Large data").
//!
//! A fresh shared-memory file costs the kernel a page allocation, a page clearing and a page
//! fault per 4 KiB, which held large data crossing to or from a worker OS process to about
//! 2 GB/s. An arena is one memfd, mapped once for good in the BEAM and in each worker that
//! uses it, whose pages stay allocated and mapped between calls: copying into it runs at
//! `memcpy` speed. Its size is virtual (`large_data_arena`); pages are allocated on first use,
//! and freed space above `large_data_arena_retain` bytes goes back to the kernel (`trim`).
//!
//! - A pool's **argument arena**: callers copy a large binary into a region of it
//!   (`arena_put`, on a dirty scheduler) and the worker reads it in place. The region is held
//!   by a `Lease` the pool keeps with the job; the pool releases it when the job ends, or
//!   later if the worker reported that Python still holds a view of it
//!   (lib/snakepit/pool/process/shm.ex).
//! - A worker's **result arena**: the worker (priv/python/snakepit_bridge/_shm.py) allocates
//!   in it and writes a large result there; `arena_binary` gives a resource binary over that
//!   region (no copy). A table of one byte per page at the start of the arena says which
//!   regions the BEAM still holds: the worker sets a region's byte before it sends the reply,
//!   and the binary's destructor clears it, after which the worker may reuse the region.
//!
//! Workers open an arena at `/proc/<BEAM pid>/fd/<fd>`, so no file is left behind by a BEAM
//! that dies.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use parking_lot::Mutex;
use rustler::{Binary, Encoder, Env, ResourceArc, Term};

use crate::atoms;
use crate::regions::Regions as Alloc;

const PAGE: usize = 4096;

/// One memfd mapped read-write at `ptr` for `cap` bytes.
pub struct Arena {
    fd: libc::c_int,
    ptr: usize,
    cap: usize,
    /// Freed space below this offset keeps its pages.
    retain: usize,
    /// Bytes of the page table at the start (a result arena), 0 for an argument arena.
    table: usize,
    alloc: Mutex<Alloc>,
}

#[rustler::resource_impl]
impl rustler::Resource for Arena {}

/// The mapping and the memfd, given up on the release thread (unmapping takes milliseconds).
struct Unmap(usize, usize, libc::c_int);

impl Drop for Unmap {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.0 as *mut libc::c_void, self.1);
            libc::close(self.2);
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        crate::release::plain(Unmap(self.ptr, self.cap, self.fd), None);
    }
}

impl Arena {
    fn create(cap: usize, retain: usize, result: bool) -> Result<Arena, String> {
        let cap = cap.div_ceil(PAGE) * PAGE;
        let fd = unsafe { libc::memfd_create(c"snakepit-arena".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        let fail = |what: &str| {
            let e = format!("{what}: {}", std::io::Error::last_os_error());
            unsafe { libc::close(fd) };
            Err(e)
        };
        if unsafe { libc::ftruncate(fd, cap as libc::off_t) } != 0 {
            return fail("ftruncate");
        }
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return fail("mmap");
        }
        let table = if result {
            (cap / PAGE).div_ceil(PAGE) * PAGE
        } else {
            0
        };
        Ok(Arena {
            fd,
            ptr: ptr as usize,
            cap,
            retain: retain.min(cap),
            table,
            alloc: Mutex::new(Alloc::default()),
        })
    }

    /// Gives the pages of `[from, to)` back to the kernel (they read as zeros after).
    fn punch(&self, from: usize, to: usize) {
        unsafe {
            libc::fallocate(
                self.fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (to - from) as libc::off_t,
            );
        }
    }
}

/// A region of an argument arena, held while the pool keeps it; freed by `arena_release`
/// or, failing that, when the BEAM drops the last reference. Once a binary is made over it
/// (`arena_lease_binary`: Python returned a view of its argument), only the last reference
/// frees it.
pub struct Lease {
    arena: ResourceArc<Arena>,
    off: usize,
    len: usize,
    freed: AtomicBool,
    bound: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for Lease {}

impl Lease {
    /// Frees the region (once, and not while a binary refers to it); whether space above
    /// the retained size is now free.
    fn release(&self) -> bool {
        if self.bound.load(Ordering::Acquire) || self.freed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut alloc = self.arena.alloc.lock();
        alloc.regions.remove(&self.off);
        alloc.high > self.arena.retain
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.bound.store(false, Ordering::Release);
        self.release();
    }
}

/// A region of a result arena that a binary holds: its byte of the page table is cleared
/// when the binary is freed, which hands the region back to the worker.
pub struct Slice {
    arena: ResourceArc<Arena>,
    off: usize,
    len: usize,
}

#[rustler::resource_impl]
impl rustler::Resource for Slice {}

impl Drop for Slice {
    fn drop(&mut self) {
        let flag = (self.arena.ptr + self.off / PAGE) as *const AtomicU8;
        // Release: the BEAM's last reads of the region come before the worker's next writes.
        unsafe { (*flag).store(0, Ordering::Release) };
    }
}

/// `{:ok, arena, path}`: a new arena of `cap` bytes (virtual) keeping up to `retain` bytes of
/// freed space allocated; `result` makes it a result arena (with its page table). `path` is
/// where a worker opens it. `{:error, reason}` when the kernel refuses.
#[rustler::nif]
fn arena_new(env: Env<'_>, cap: usize, retain: usize, result: bool) -> Term<'_> {
    if cap < 2 * PAGE {
        return (rustler::types::atom::error(), "arena too small").encode(env);
    }
    match Arena::create(cap, retain, result) {
        Ok(arena) => {
            crate::release::start();
            let path = format!("/proc/{}/fd/{}", std::process::id(), arena.fd);
            (atoms::ok(), ResourceArc::new(arena), path).encode(env)
        }
        Err(reason) => (rustler::types::atom::error(), reason).encode(env),
    }
}

/// `{:ok, offset, lease}`: `bin` copied into a free region of an argument arena (page-aligned),
/// or `:full`.
#[rustler::nif(schedule = "DirtyCpu")]
fn arena_put<'a>(env: Env<'a>, arena: ResourceArc<Arena>, bin: Binary<'a>) -> Term<'a> {
    let len = bin.len();
    let size = len.max(1).div_ceil(PAGE) * PAGE;
    let Some(off) = arena.alloc.lock().take(size, arena.cap) else {
        return atoms::full().encode(env);
    };
    unsafe {
        std::ptr::copy_nonoverlapping(bin.as_ptr(), (arena.ptr + off) as *mut u8, len);
    }
    let lease = ResourceArc::new(Lease {
        arena,
        off,
        len,
        freed: AtomicBool::new(false),
        bound: AtomicBool::new(false),
    });
    (atoms::ok(), off, lease).encode(env)
}

/// Frees a lease's region (again: nothing). `:trim` when freed space above the retained size
/// can go back to the kernel (`arena_trim/2`, on a dirty scheduler), else `:ok`.
#[rustler::nif]
fn arena_release(lease: ResourceArc<Lease>) -> rustler::Atom {
    if lease.release() {
        atoms::trim()
    } else {
        atoms::ok()
    }
}

/// Gives the pages of the argument arena's free space above the retained size (`all`: all
/// its free space, the pool is idle) back to the kernel.
#[rustler::nif(schedule = "DirtyIo")]
fn arena_trim(arena: ResourceArc<Arena>, all: bool) -> rustler::Atom {
    let keep = if all { 0 } else { arena.retain };
    let mut alloc = arena.alloc.lock();
    for (from, to) in alloc.surplus(keep) {
        arena.punch(from, to);
    }
    let end = alloc.regions.iter().next_back().map_or(0, |(o, l)| o + l);
    alloc.high = end.max(alloc.high.min(keep));
    atoms::ok()
}

/// `{:ok, binary}` over `len` bytes at `at` of a lease's region (no copy): a result that is a
/// view of an argument. The region then stays until the binary and the lease are both gone.
/// `:error` outside the region or after the lease was freed.
#[rustler::nif]
fn arena_lease_binary(env: Env<'_>, lease: ResourceArc<Lease>, at: usize, len: usize) -> Term<'_> {
    if len > lease.len || at > lease.len - len || lease.freed.load(Ordering::Acquire) {
        return rustler::types::atom::error().encode(env);
    }
    lease.bound.store(true, Ordering::Release);
    // Freed meanwhile (a release that ran before `bound` was seen): no binary.
    if lease.freed.load(Ordering::Acquire) {
        return rustler::types::atom::error().encode(env);
    }
    let bin = lease.make_binary(env, |l| unsafe {
        std::slice::from_raw_parts((l.arena.ptr + l.off + at) as *const u8, len)
    });
    (atoms::ok(), bin).encode(env)
}

/// `{:ok, binary}` over `len` bytes at `off` of a result arena (no copy), or `:error` for a
/// region outside it. The binary holds the region until the BEAM frees it.
#[rustler::nif]
fn arena_binary(env: Env<'_>, arena: ResourceArc<Arena>, off: usize, len: usize) -> Term<'_> {
    let inside = arena.table > 0
        && off >= arena.table
        && off & (PAGE - 1) == 0
        && len <= arena.cap
        && off <= arena.cap - len;
    if !inside {
        return rustler::types::atom::error().encode(env);
    }
    let slice = ResourceArc::new(Slice { arena, off, len });
    let bin = slice.make_binary(env, |s| unsafe {
        std::slice::from_raw_parts((s.arena.ptr + s.off) as *const u8, s.len)
    });
    (atoms::ok(), bin).encode(env)
}

/// `{regions, bytes}` in use in an argument arena (tests, diagnosis).
#[rustler::nif]
fn arena_usage(arena: ResourceArc<Arena>) -> (usize, usize) {
    let alloc = arena.alloc.lock();
    (alloc.regions.len(), alloc.regions.values().sum())
}
