//! Spare buffers for the large copies of buffer.rs (docs/architecture.md, "Large data").
//!
//! A writable buffer result (a NumPy array Python computed, a `bytearray`) is copied once,
//! into memory a resource binary owns. Fresh memory costs a page fault per 4 KiB as the copy
//! writes it (about 1.5 GB/s here, a tenth of a `memcpy` into mapped memory), so the release
//! thread, which drops those copies, keeps up to `KEEP` bytes of them for the next large copy
//! instead of unmapping them, and unmaps what has waited `IDLE` unused. Taking a spare never
//! unmaps anything, so it is safe on a scheduler (an inline call).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Bytes of spare buffers kept at most.
pub const KEEP: usize = 256 << 20;
/// A spare unused this long is unmapped (by the release thread).
pub const IDLE: Duration = Duration::from_secs(10);

struct Spare {
    buf: Vec<u8>,
    since: Instant,
}

static SPARES: Mutex<Vec<Spare>> = Mutex::new(Vec::new());

/// A buffer of at least `len` initialised bytes: the smallest spare that fits without wasting
/// more than half of it, else a new one (zeroed lazily by the kernel).
pub fn take(len: usize) -> Vec<u8> {
    let found = {
        let mut spares = SPARES.lock();
        spares
            .iter()
            .enumerate()
            .filter(|(_, s)| s.buf.len() >= len && s.buf.len() / 2 <= len)
            .min_by_key(|(_, s)| s.buf.len())
            .map(|(i, _)| i)
            .map(|i| spares.swap_remove(i).buf)
    };
    found.unwrap_or_else(|| vec![0u8; len])
}

/// Keeps `buf` for a later copy if there is room (the release thread calls it; what does not
/// fit is dropped here, off the schedulers). The spares unused for `IDLE` go now too, whatever
/// else the release thread is busy with.
pub fn give(buf: Vec<u8>) {
    let now = Instant::now();
    let mut dropped = Vec::new();
    {
        let mut spares = SPARES.lock();
        dropped.extend(expired(&mut spares, now));
        let held: usize = spares.iter().map(|s| s.buf.len()).sum();
        if held + buf.len() <= KEEP {
            spares.push(Spare { buf, since: now });
        } else {
            dropped.push(Spare { buf, since: now });
        }
    }
    drop(dropped);
}

/// Unmaps the spares unused for `IDLE` (the release thread, when it has been idle).
pub fn expire() {
    let old = expired(&mut SPARES.lock(), Instant::now());
    drop(old);
}

/// Takes the spares unused for `IDLE` out of `spares` (dropped by the caller, after the lock).
fn expired(spares: &mut Vec<Spare>, now: Instant) -> Vec<Spare> {
    let (old, keep) = std::mem::take(spares)
        .into_iter()
        .partition(|s| now.duration_since(s.since) >= IDLE);
    *spares = keep;
    old
}

/// Bytes of spare buffers held now (tests, stats).
pub fn held() -> usize {
    SPARES.lock().iter().map(|s| s.buf.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_reused_for_a_copy_that_fits_and_expires_when_idle() {
        let mut buf = take(1 << 20);
        buf[0] = 7;
        let ptr = buf.as_ptr();
        give(buf);
        assert!(held() >= 1 << 20);
        // Too small a request would waste most of it: a new buffer.
        let small = take(1000);
        assert_ne!(small.as_ptr(), ptr);
        // One that fits takes it, with its bytes still there.
        let again = take((1 << 20) - 10);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again[0], 7);
        give(again);
        // Past KEEP: not kept.
        let before = held();
        give(vec![0u8; KEEP]);
        assert_eq!(held(), before);
        expire(); // not idle yet
        assert_eq!(held(), before);
    }
}
