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

/// Whether copying `term` visits more than [`BUDGET`] terms.
pub fn is_large(term: Term<'_>) -> bool {
    let mut left = BUDGET;
    !walk(term, &mut left)
}

/// Visits `term`, spending `left`; false once the budget is spent.
fn walk(term: Term<'_>, left: &mut usize) -> bool {
    if *left == 0 {
        return false;
    }
    *left -= 1;
    match term.get_type() {
        TermType::List => {
            let mut tail = term;
            while let Ok((head, rest)) = tail.list_get_cell() {
                if !walk(head, left) {
                    return false;
                }
                tail = rest;
            }
            true
        }
        TermType::Tuple => match get_tuple(term) {
            Ok(elems) => elems.iter().all(|t| walk(*t, left)),
            Err(_) => true,
        },
        TermType::Map => match rustler::MapIterator::new(term) {
            Some(iter) => {
                for (k, v) in iter {
                    if !walk(k, left) || !walk(v, left) {
                        return false;
                    }
                }
                true
            }
            None => true,
        },
        _ => true,
    }
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
