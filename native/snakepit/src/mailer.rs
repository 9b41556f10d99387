//! Messages from Python to Erlang processes, from any thread.
//!
//! `enif_send` without a process environment may only be called from threads the BEAM does not
//! manage, and Python code can run on a dirty scheduler (adapter construction at pool start).
//! So a send from such a thread, and every log record, goes through one "snakepit-mail"
//! thread. Sends from pool threads go directly.

use std::sync::OnceLock;

use crossbeam_channel::Sender;
use rustler::env::SavedTerm;
use rustler::{Encoder, LocalPid, OwnedEnv};

use crate::atoms;

pub enum Mail {
    /// A term already built in its own environment.
    Term {
        env: OwnedEnv,
        to: LocalPid,
        term: SavedTerm,
    },
    /// A Python log record for the `Snakepit.PythonLogger` process.
    Log {
        level: u32,
        logger: String,
        message: String,
        thread: String,
        pool: Option<String>,
    },
}

pub fn on_scheduler_thread() -> bool {
    unsafe { rustler::sys::enif_thread_type() > 0 }
}

pub fn post(mail: Mail) {
    let _ = mailer().send(mail);
}

fn mailer() -> &'static Sender<Mail> {
    static TX: OnceLock<Sender<Mail>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Mail>();
        std::thread::Builder::new()
            .name("snakepit-mail".into())
            .spawn(move || {
                for mail in rx {
                    deliver(mail);
                }
            })
            .expect("cannot start the snakepit mail thread");
        tx
    })
}

fn deliver(mail: Mail) {
    match mail {
        Mail::Term { mut env, to, term } => {
            let _ = env.send_and_clear(&to, |e| term.load(e));
        }
        Mail::Log {
            level,
            logger,
            message,
            thread,
            pool,
        } => {
            let mut env = OwnedEnv::new();
            let Some(to) = whereis(&env, atoms::python_logger_process()) else {
                return;
            };
            let _ = env.send_and_clear(&to, |e| {
                (atoms::snakepit_log(), level, logger, message, thread, pool).encode(e)
            });
        }
    }
}

/// `enif_whereis_pid` from a thread the BEAM does not manage (no caller env).
fn whereis(env: &OwnedEnv, name: rustler::Atom) -> Option<LocalPid> {
    env.run(|e| {
        let term = name.encode(e);
        let mut pid = std::mem::MaybeUninit::uninit();
        let found = unsafe {
            rustler::sys::enif_whereis_pid(std::ptr::null_mut(), term.as_c_arg(), pid.as_mut_ptr())
        };
        (found != 0).then(|| LocalPid::from_c_arg(unsafe { pid.assume_init() }))
    })
}
