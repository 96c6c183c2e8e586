"""SIGTERM, what a batch scheduler sends before it kills a job, mid-run: the step under way is saved, the process
exits 143, and `--resume` ends bit for bit where a run never interrupted ends (weights and loss log). The random
mix of signals and moments is bench/crash_consistency.py's (and tests/test_crash.py's); this names the scheduler's
case on its own, with the signal sent once training is certainly under way."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, specc_here

sys.path.insert(0, str(ROOT / "bench"))
pytest.importorskip("torch")
import crash_consistency as cc  # noqa: E402

pytestmark = pytest.mark.slow


def test_sigterm_mid_run_then_resume_is_bit_identical(tmp_path, crash_reference):
    reference, out = crash_reference, tmp_path / "terminated"
    proc = subprocess.Popen(cc.command(out), env=cc._env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # until a few steps are logged: mid-run
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err.decode(), err.decode()
    saved = json.loads((out / "last" / "trainer.json").read_text())["step"]
    assert 10 <= saved < 100  # the step under way when the signal came, not the last evaluation's
    done = specc_here(*cc.arguments(out, resume=True))  # in this process: the signal was the other one's
    assert done.returncode == 0, done.stderr
    a, b = cc.weights(out), cc.weights(reference)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert cc.losses(out) == cc.losses(reference)
