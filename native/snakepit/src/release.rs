//! The release thread: where Python objects that Erlang let go of are dropped
//! (docs/architecture.md, "Dropping Python objects").
//!
//! Resource destructors (`%Snakepit.Ref{}`, resource binaries, a pool's native state) run on
//! whatever BEAM thread garbage-collects them, usually a scheduler, which must neither wait for
//! the GIL nor run Python. They hand what they own to one "snakepit-release" thread, which
//! attaches to the main interpreter and drops it there. No `Py<T>` may be dropped while
//! detached (pyo3 would defer it to whichever thread attaches next, maybe one in another
//! interpreter; the test build aborts instead): this thread is where such values go. Plain
//! values (a large copy, a shared-memory mapping of shm.rs: unmapping tens of MB takes
//! milliseconds) come here too, and are dropped without attaching.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

/// Drops per attach at most: a flood never holds the GIL for long.
const BATCH: usize = 4096;

struct Item {
    value: Box<dyn Send>,
    /// It holds Python objects: dropped while attached.
    python: bool,
    /// Counted here once dropped (stats, tests).
    counter: Option<&'static AtomicU64>,
}

static TX: OnceLock<Sender<Item>> = OnceLock::new();

/// Drops `value`, which holds objects of the main interpreter, on the release thread. Never
/// blocks and never touches Python; `counter` is incremented once it is gone.
pub fn python<T: Send + 'static>(value: T, counter: Option<&'static AtomicU64>) {
    send(Item {
        value: Box::new(value),
        python: true,
        counter,
    });
}

/// Drops `value` (no Python object in it) on the release thread.
pub fn plain<T: Send + 'static>(value: T, counter: Option<&'static AtomicU64>) {
    send(Item {
        value: Box::new(value),
        python: false,
        counter,
    });
}

/// Starts the thread now (from a pool thread), so a destructor never has to.
pub fn start() {
    TX.get_or_init(spawn);
}

fn send(item: Item) {
    if let Err(crossbeam_channel::SendError(item)) = TX.get_or_init(spawn).send(item) {
        // No release thread (it could not be started): leak rather than block or abort.
        std::mem::forget(item);
    }
}

fn spawn() -> Sender<Item> {
    let (tx, rx) = crossbeam_channel::unbounded();
    match std::thread::Builder::new()
        .name("snakepit-release".into())
        .spawn(move || run(rx))
    {
        Ok(_) => tx,
        Err(_) => crossbeam_channel::unbounded().0,
    }
}

fn run(rx: Receiver<Item>) {
    loop {
        let first = match rx.recv_timeout(crate::spare::IDLE) {
            Ok(item) => item,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // Nothing to drop for a while: unmap the spare copy buffers (spare.rs).
                crate::spare::expire();
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if !first.python {
            drop_item(first);
            continue;
        }
        crate::gil_gate::attach(|_py| {
            drop_item(first);
            // What else queued up meanwhile, Python objects or not, while attached.
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(item) => drop_item(item),
                    Err(_) => break,
                }
            }
        });
    }
}

fn drop_item(item: Item) {
    let Item { value, counter, .. } = item;
    drop(value);
    if let Some(c) = counter {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
