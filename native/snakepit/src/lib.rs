//! Snakepit's NIF: CPython hosted in the BEAM, a native thread pool running adapter methods.
//! Each module matches one concern: runtime (the interpreter), pool (config and lifecycle),
//! thread (what a pool thread does), reload (Snakepit.reload/1), job (one call and its cancellation), dispatch (the calls
//! into Python), stats, convert (terms <-> Python), error. docs/architecture.md has the map.

#[cfg(feature = "nif")]
pub mod aio;
#[cfg(feature = "nif")]
pub mod arena;
#[cfg(feature = "nif")]
pub mod buffer;
#[cfg(feature = "nif")]
pub mod callback;
pub mod contention;
#[cfg(feature = "nif")]
pub mod convert;
#[cfg(feature = "nif")]
pub mod dispatch;
pub mod error;
pub mod gil_gate;
pub mod idle;
#[cfg(feature = "nif")]
pub mod inline;
#[cfg(feature = "nif")]
pub mod interrupt;
pub mod job;
#[cfg(feature = "nif")]
pub mod mailer;
#[cfg(feature = "nif")]
pub mod ndarray;
#[cfg(feature = "nif")]
pub mod nif;
#[cfg(feature = "nif")]
pub mod offload;
#[cfg(feature = "nif")]
pub mod pool;
#[cfg(feature = "nif")]
pub mod refs;
pub mod regions;
#[cfg(feature = "nif")]
pub mod release;
#[cfg(feature = "nif")]
pub mod reload;
pub mod runtime;
#[cfg(feature = "nif")]
pub mod shm;
#[cfg(feature = "nif")]
pub mod slot;
pub mod spare;
#[cfg(feature = "nif")]
pub mod stats;
#[cfg(feature = "nif")]
pub mod subinterp;
#[cfg(feature = "nif")]
pub mod thread;
#[cfg(feature = "nif")]
pub mod worker;

#[cfg(feature = "nif")]
mod atoms {
    rustler::atoms! {
        ok, nil, true_ = "true", false_ = "false",
        bytes, buffer, nan, infinity, neg_infinity,
        __struct__, map, mapset_module = "Elixir.MapSet",
        python_error, conversion, validation, pool, worker,
        cancelled, done, chunk, closed,
        snakepit_log, snakepit_recycled, snakepit_recycle_failed, max_requests, ttl,
        saturated, python_logger_process = "Elixir.Snakepit.PythonLogger",
        resource, type_ = "type", repr, id, ref_module = "Elixir.Snakepit.Ref",
        full, trim,
    }
}

#[cfg(feature = "nif")]
rustler::init!("Elixir.Snakepit.Native");
