//! Who may be using the main interpreter right now: the count behind inline calls
//! (inline.rs; docs/architecture.md, "Under load: inline calls").
//!
//! An inline call runs on a BEAM scheduler, which must never wait for the GIL. CPython has no
//! "take the GIL only if it is free", so Snakepit keeps its own count of its threads that hold
//! the main interpreter or may take it at any moment: every attach of Snakepit's own threads
//! goes through [`attach`], and a pool thread leaves the count only while it is parked
//! ([`Parked`]). An inline call starts only when it can swap a count of zero for the
//! [`INLINE`] mark, so it never waits behind a Snakepit thread. Threads Snakepit does not start
//! (an adapter's `threading.Thread`, an asyncio loop) are not counted: inline.rs measures how
//! long each attach waited and stops inline calls for a while when one waited.
//!
//! On a free-threaded build there is no GIL to wait for, but an inline call must still have
//! its adapter instance to itself (a pool of `threads_per_worker: 1` promises one call at a
//! time): a thread that joins the count while the mark is set waits until the inline call is
//! over before it attaches. On GIL builds the GIL does that wait.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::Python;

/// The mark of a running inline call, in a [`Gate`]'s count.
pub const INLINE: usize = 1 << (usize::BITS - 1);

/// Snakepit threads attached to the main interpreter or about to be, plus [`INLINE`].
pub struct Gate {
    users: AtomicUsize,
    /// Whether a thread joining while an inline call runs waits for it (free-threaded builds;
    /// with a GIL, the GIL makes it wait).
    waits: bool,
}

/// The main interpreter's.
static GATE: Gate = Gate::new(crate::runtime::FREE_THREADED);

thread_local! {
    /// How many times this thread is in the count (nested attaches).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

impl Gate {
    pub const fn new(waits: bool) -> Gate {
        Gate {
            users: AtomicUsize::new(0),
            waits,
        }
    }

    fn join(&self, n: usize) {
        let before = self.users.fetch_add(n, Ordering::SeqCst);
        if self.waits && before & INLINE != 0 {
            self.wait_for_inline();
        }
    }

    /// Waits until the running inline call (a few µs) is over.
    fn wait_for_inline(&self) {
        let mut spins = 0u32;
        while self.users.load(Ordering::SeqCst) & INLINE != 0 {
            spins += 1;
            if spins < 1_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// The calling thread is in the count while the result lives.
    fn counted(&self) -> Counted<'_> {
        self.join(1);
        DEPTH.with(|d| d.set(d.get() + 1));
        Counted(self)
    }

    /// The calling thread (detached, about to park) is out of the count while the result
    /// lives; it joins again, before it attaches, when the result is dropped. A thread that
    /// is not counted is unaffected.
    fn parked(&self) -> Parked<'_> {
        let depth = DEPTH.with(|d| d.get());
        if depth > 0 {
            self.users.fetch_sub(depth, Ordering::SeqCst);
        }
        Parked(self, depth)
    }

    /// The mark of the one inline call that may run now; None when a Snakepit thread is in
    /// the count or another inline call runs.
    fn inline_turn(&self) -> Option<InlineTurn<'_>> {
        self.users
            .compare_exchange(0, INLINE, Ordering::SeqCst, Ordering::Relaxed)
            .ok()
            .map(|_| InlineTurn(self))
    }

    /// The count now, without the mark.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::SeqCst) & !INLINE
    }
}

struct Counted<'g>(&'g Gate);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
        self.0.users.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Parked<'g>(&'g Gate, usize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if self.1 > 0 {
            self.0.join(self.1);
        }
    }
}

pub struct InlineTurn<'g>(&'g Gate);

impl Drop for InlineTurn<'_> {
    fn drop(&mut self) {
        self.0.users.fetch_and(!INLINE, Ordering::SeqCst);
    }
}

/// `Python::attach` for Snakepit's own threads, counted while attached.
pub fn attach<F, R>(f: F) -> R
where
    F: for<'py> FnOnce(Python<'py>) -> R,
{
    let _counted = GATE.counted();
    Python::attach(f)
}

/// Out of the main interpreter's count while the result lives (a pool thread, parked).
pub fn parked() -> Parked<'static> {
    GATE.parked()
}

/// Whether a Snakepit thread counts, or an inline call runs, on the main interpreter now (a
/// load: the cheap test before [`inline_turn`]).
pub fn in_use() -> bool {
    GATE.users.load(Ordering::Relaxed) != 0
}

/// The turn of an inline call on the main interpreter, if nobody else counts.
pub fn inline_turn() -> Option<InlineTurn<'static>> {
    GATE.inline_turn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_turn_is_taken_only_when_nobody_counts() {
        // A gate of its own, on a thread of its own (the depth is per thread).
        std::thread::spawn(|| {
            let gate = Gate::new(false);
            let turn = gate.inline_turn().expect("nobody counts yet");
            assert!(gate.inline_turn().is_none(), "one inline call at a time");
            drop(turn);

            let counted = gate.counted();
            assert_eq!(gate.users(), 1);
            assert!(
                gate.inline_turn().is_none(),
                "a counted thread stops inline calls"
            );
            {
                let _parked = gate.parked();
                assert_eq!(gate.users(), 0);
                let turn = gate.inline_turn().expect("a parked thread does not count");
                drop(turn);
            }
            assert_eq!(gate.users(), 1, "back in the count once unparked");
            drop(counted);
            assert_eq!(gate.users(), 0);
        })
        .join()
        .unwrap();

        // A thread never counted: parking it changes nothing.
        std::thread::spawn(|| {
            let gate = Gate::new(false);
            let _parked = gate.parked();
            assert_eq!(gate.users(), 0);
            assert!(gate.inline_turn().is_some());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn on_a_free_threaded_build_a_joining_thread_waits_for_the_inline_call() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        let gate = Arc::new(Gate::new(true));
        let over = Arc::new(AtomicBool::new(false));
        let turn = gate.inline_turn().unwrap();
        let joiner = {
            let (gate, over) = (Arc::clone(&gate), Arc::clone(&over));
            std::thread::spawn(move || {
                let _counted = gate.counted();
                // Only once the inline call is over.
                assert!(
                    over.load(Ordering::SeqCst),
                    "joined while the inline call ran"
                );
            })
        };
        // The joiner is in the count, so it is past fetch_add and waiting.
        while gate.users() == 0 {
            std::hint::spin_loop();
        }
        over.store(true, Ordering::SeqCst);
        drop(turn);
        joiner.join().unwrap();
        assert_eq!(gate.users(), 0);
    }
}
