//! Large arguments leave the normal scheduler (docs/architecture.md, "Large data").
//!
//! `submit` copies its arguments into the job's own environment (`enif_make_copy`), which is
//! linear in their size: for a 64 MB list of floats that held a normal scheduler for ~200 ms.
//! [`is_large`] is a bounded walk (it stops after [`BUDGET`] terms, so it costs at most a few
//! microseconds); a larger argument makes `submit` reschedule itself as a dirty-CPU NIF with
//! `enif_schedule_nif`, where the copy may take as long as it needs. Binaries count as one
//! term: a refc binary is copied by reference.

use rustler::types::tuple::get_tuple;
use rustler::{Env, Term, TermType};

/// Terms a normal-scheduler submit may copy: far under a millisecond of copying.
pub const BUDGET: usize = 4_096;

/// Whether copying `term` visits more than [`BUDGET`] terms. Iterative, with its own stack:
/// the NIF runs on a scheduler's small stack, and a term may nest thousands of levels deep.
pub fn is_large(term: Term<'_>) -> bool {
    let mut left = BUDGET;
    let mut todo = vec![term];
    while let Some(term) = todo.pop() {
        if left == 0 {
            return true;
        }
        left -= 1;
        match term.get_type() {
            TermType::List => {
                let mut tail = term;
                while let Ok((head, rest)) = tail.list_get_cell() {
                    if todo.len() > left {
                        return true;
                    }
                    todo.push(head);
                    tail = rest;
                }
            }
            TermType::Tuple => {
                if let Ok(elems) = get_tuple(term) {
                    if todo.len() + elems.len() > left {
                        return true;
                    }
                    todo.extend(elems);
                }
            }
            TermType::Map => {
                if let Some(iter) = rustler::MapIterator::new(term) {
                    for (k, v) in iter {
                        if todo.len() + 2 > left {
                            return true;
                        }
                        todo.push(k);
                        todo.push(v);
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// Reschedules the running NIF as `fun` on a dirty-CPU scheduler with `args`; the NIF must
/// return what this returns.
pub fn reschedule<'a>(
    env: Env<'a>,
    name: &'static std::ffi::CStr,
    fun: unsafe extern "C" fn(
        *mut rustler::sys::ErlNifEnv,
        i32,
        *const rustler::sys::ErlNifTerm,
    ) -> rustler::sys::ErlNifTerm,
    args: &[Term<'a>],
) -> Term<'a> {
    let raw: Vec<rustler::sys::ErlNifTerm> = args.iter().map(|t| t.as_c_arg()).collect();
    unsafe {
        let term = rustler::sys::enif_schedule_nif(
            env.as_c_arg(),
            name.as_ptr(),
            rustler::sys::ERL_NIF_DIRTY_JOB_CPU_BOUND as i32,
            fun,
            raw.len() as i32,
            raw.as_ptr(),
        );
        Term::new(env, term)
    }
}
