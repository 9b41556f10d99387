//! `Snakepit.reload/1` in the `:thread` profile (docs/architecture.md, "Reload").
//!
//! On a dirty scheduler: re-import the adapter's module and the changed modules of
//! `python_path` (`snakepit_bridge._reload.reload_modules`), build a fresh instance for every
//! worker, and only when all of them were built swap them in (`WorkerSlot::replace`). A failure
//! (a `SyntaxError`, an exception in `__init__`) cleans up the instances built so far and
//! returns the error: the current instances go on serving. Calls in flight finish on the old
//! instances; a background thread waits for them and runs the old instances' `cleanup()`.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::dispatch;
use crate::error::{Error, Result};
use crate::pool::PoolInner;
use crate::worker::{self, Worker};

/// Reloads `pool`'s code and instances; returns the names of the modules re-imported.
pub fn reload(pool: &Arc<PoolInner>, roots: Vec<String>) -> Result<Vec<String>> {
    if pool.config.subinterpreters {
        // Instances are built inside each worker's own interpreter (subinterp/), not here.
        return Err(Error::Validation {
            message: format!(
                "reload is not supported for :subinterpreter pools; stop and start pool {} \
                 instead (its new interpreters import the code afresh)",
                pool.config.name
            ),
            available: Vec::new(),
        });
    }
    if pool.is_stopped() {
        return Err(Error::Pool(format!(
            "pool {} is stopping: nothing to reload",
            pool.config.name
        )));
    }
    let (modules, old) = crate::gil_gate::attach(|py| -> Result<_> {
        let modules: Vec<String> = py
            .import("snakepit_bridge._reload")
            .and_then(|m| {
                m.getattr("reload_modules")?
                    .call1((pool.config.adapter.as_str(), roots))?
                    .extract()
            })
            .map_err(|e| Error::from_py(py, e))?;
        let mut fresh: Vec<Worker> = Vec::with_capacity(pool.workers.len());
        for slot in &pool.workers {
            match pool.config.create_worker(py, slot.index) {
                Ok(w) => fresh.push(w),
                Err(e) => {
                    for w in &fresh {
                        dispatch::cleanup(py, w);
                    }
                    return Err(e);
                }
            }
        }
        pool.inline.set_commands(&fresh);
        let old: Vec<Arc<Worker>> = pool
            .workers
            .iter()
            .zip(fresh)
            .map(|(slot, w)| slot.replace(py, w))
            .collect();
        Ok((modules, old))
    })?;
    let _ = std::thread::Builder::new()
        .name("snakepit-reload".into())
        .spawn(move || {
            crate::gil_gate::attach(|py| {
                for w in old {
                    worker::retire(py, w, dispatch::cleanup);
                }
            })
        });
    Ok(modules)
}
