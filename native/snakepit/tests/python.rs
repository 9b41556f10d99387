//! Parts of the NIF that need Python but no BEAM.

use pyo3::prelude::*;
use snakepit::error::Error;

#[test]
fn python_exceptions_keep_type_message_and_traceback() {
    Python::initialize();
    Python::attach(|py| {
        let err = py
            .run(
                c"def f():\n    raise KeyError('missing')\nf()\n",
                None,
                None,
            )
            .unwrap_err();
        match Error::from_py(py, err) {
            Error::Python {
                python_type,
                message,
                traceback,
            } => {
                assert_eq!(python_type, "KeyError");
                assert_eq!(message, "'missing'");
                let tb = traceback.expect("a traceback");
                assert!(tb.contains("Traceback (most recent call last)"), "{tb}");
                assert!(tb.contains("in f"), "{tb}");
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn exceptions_from_modules_are_qualified() {
    Python::initialize();
    Python::attach(|py| {
        let err = py
            .run(c"import json\njson.loads('{')\n", None, None)
            .unwrap_err();
        match Error::from_py(py, err) {
            Error::Python { python_type, .. } => {
                assert_eq!(python_type, "json.decoder.JSONDecodeError")
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn categories_and_display() {
    let e = Error::Validation {
        message: "unknown command".into(),
        available: vec!["ping".into()],
    };
    assert_eq!(e.to_string(), "unknown command");
    assert_eq!(Error::Pool("full".into()).message(), "full");
    let py = Error::Python {
        python_type: "ValueError".into(),
        message: "bad".into(),
        traceback: None,
    };
    assert_eq!(py.to_string(), "ValueError: bad");
}

#[test]
fn free_threaded_flag_matches_the_interpreter() {
    Python::initialize();
    let gil_disabled = Python::attach(|py| {
        py.import("sysconfig")
            .unwrap()
            .call_method1("get_config_var", ("Py_GIL_DISABLED",))
            .unwrap()
            .extract::<Option<i64>>()
            .unwrap()
            .unwrap_or(0)
            == 1
    });
    assert_eq!(snakepit::runtime::FREE_THREADED, gil_disabled);
}
