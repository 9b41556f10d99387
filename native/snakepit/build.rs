//! Links the libpython that pyo3 found (PYO3_PYTHON) with an rpath, so the BEAM can load the
//! NIF without LD_LIBRARY_PATH, and exposes pyo3's cfgs (Py_GIL_DISABLED, Py_3_x).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if !config.shared() {
        panic!(
            "snakepit: the Python at {:?} has no shared libpython (built without --enable-shared). \
             Install one that has it (Debian: apt-get install libpython3-dev; pyenv: \
             PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install <version>) and point SNAKEPIT_PYTHON at it.",
            config.executable()
        );
    }
    println!("cargo:rustc-check-cfg=cfg(pyo3_disable_reference_pool)");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=SNAKEPIT_PYTHON");
}
