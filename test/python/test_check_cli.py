"""python -m snakepit_bridge.check, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PRIV_PYTHON = os.path.abspath(os.path.join(HERE, "..", "..", "priv", "python"))

SHOWCASE = "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PRIV_PYTHON, HERE])
    return subprocess.run(
        [sys.executable, "-m", "snakepit_bridge.check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_showcase_stress_run_succeeds():
    proc = run_check(
        SHOWCASE,
        "--threads", "20",
        "--calls", "1000",
        "--method", "compute_intensive",
        "--args", '{"data": [1, 2, 3]}',
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "1000 calls of 'compute_intensive' on 20 threads" in out
    assert "succeeded 1000, failed 0" in out
    assert "total_requests=1000 active_requests=0 max_workers=20" in out
    assert "Thread safety report (enabled, warn mode)" in out
    assert "compute_intensive  calls=1000" in out


def test_json_report():
    proc = run_check(SHOWCASE, "--threads", "4", "--calls", "200", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["method"] == "ping"
    assert report["succeeded"] == 200 and report["failed"] == 0
    assert report["adapter_stats"]["total_requests"] == 200
    assert report["thread_safety"]["methods"]["ping"]["calls"] == 200
    assert report["thread_safety"]["enabled"] is True


def test_failing_calls_exit_1():
    proc = run_check("guide_adapters.FlakyAdapter", "--threads", "4", "--calls", "70",
                     "--method", "work")
    assert proc.returncode == 1
    assert "succeeded 60, failed 10" in proc.stdout
    assert "ValueError" in proc.stdout


def test_missing_adapter_exit_1():
    proc = run_check("no_such_module.Adapter")
    assert proc.returncode == 1
    assert "no_such_module.Adapter" in proc.stderr


def test_usage_errors_exit_2():
    assert run_check(SHOWCASE, "--method", "nope").returncode == 2
    assert run_check(SHOWCASE, "--args", "[1, 2]").returncode == 2
    assert run_check(SHOWCASE, "--args", "{not json").returncode == 2


def test_undeclared_adapter_warns_and_strict_fails():
    proc = run_check("guide_adapters.UndeclaredAdapter", "--threads", "4", "--calls", "50")
    assert proc.returncode == 0, proc.stderr
    assert "Adapter UndeclaredAdapter does not declare thread safety." in proc.stdout
    assert "⚠️  Adapter UndeclaredAdapter does not declare thread safety." in proc.stderr
    strict = run_check("guide_adapters.UndeclaredAdapter", "--threads", "4", "--calls", "50",
                       "--strict")
    assert strict.returncode == 1


def test_guide_adapter_with_overridden_get_stats():
    proc = run_check("guide_adapters.MyAdapter", "--threads", "20", "--calls", "1000",
                     "--method", "predict", "--args", '{"input_data": "x"}')
    assert proc.returncode == 0, proc.stderr
    assert "succeeded 1000, failed 0" in proc.stdout
    assert "total_requests=1000 active_requests=0 max_workers=20" in proc.stdout
    assert "predict  calls=1000" in proc.stdout
