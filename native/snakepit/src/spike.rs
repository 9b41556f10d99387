//! Measurement only, not an API: a call run without the hand-off to a pool thread, for
//! bench/suite.exs section 9 ("Under load") and docs/architecture.md, "Under load: designs
//! without the hand-off". Issue 13 asked to measure designs that avoid waking a pool thread
//! for short calls against today's pool; these two NIFs are those designs, reduced to their
//! cost:
//!
//! - `spike_inline_call/3` runs the command on the calling *normal* scheduler: it attaches to
//!   Python, calls worker 0's instance, converts the result and detaches, all inside the NIF.
//! - `spike_dirty_call/3` does the same on a dirty-CPU scheduler.
//!
//! Neither is safe to offer: attaching waits for the GIL for as long as another thread holds
//! it (up to the 5 ms switch interval per hand-over, and a command may run for any time), so
//! the inline one can hold a normal scheduler for milliseconds; and neither has timeouts,
//! cancellation, stats or recycling. The bench calls them only with `echo` on an idle pool.
//!
//! Each scheduler thread keeps one Python thread state (made by the first call, left
//! detached): a thread state per call would cost ~15 µs (docs/architecture.md, "What shaped
//! the pool").

use std::cell::Cell;

use pyo3::{ffi, Python};
use rustler::{Encoder, Env, ResourceArc, Term};

use crate::dispatch;
use crate::error::{Error, Result};
use crate::pool::PoolRef;

thread_local! {
    static PRIMED: Cell<bool> = const { Cell::new(false) };
}

/// Gives this thread a lasting thread state: `PyGILState_Ensure` without the release that
/// would delete it, then detached, so each later attach only takes the GIL.
fn prime() {
    PRIMED.with(|primed| {
        if !primed.get() {
            unsafe {
                ffi::PyGILState_Ensure();
                ffi::PyEval_SaveThread();
            }
            primed.set(true);
        }
    })
}

fn call<'a>(env: Env<'a>, pool: &PoolRef, command: Term<'a>, args: Term<'a>) -> Term<'a> {
    if pool.0.interps.is_some() {
        // Its instances live in subinterpreters: never touched from the main one.
        let err: Result<()> = Err(Error::Worker(
            "the spike calls run only on :thread pools".into(),
        ));
        return err.encode(env);
    }
    prime();
    let worker = pool.0.workers[0].get();
    let result: Result<Term<'a>> = Python::attach(|py| {
        let obj = dispatch::invoke(py, &worker, command, args)?;
        dispatch::result_term(py, env, command, &obj)
    });
    result.encode(env)
}

#[rustler::nif]
fn spike_inline_call<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolRef>,
    command: Term<'a>,
    args: Term<'a>,
) -> Term<'a> {
    call(env, &pool, command, args)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn spike_dirty_call<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolRef>,
    command: Term<'a>,
    args: Term<'a>,
) -> Term<'a> {
    call(env, &pool, command, args)
}
