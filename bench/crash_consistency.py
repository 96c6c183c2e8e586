"""Crash consistency of `specc train`: kill training at random moments (SIGKILL; SIGINT as Ctrl-C sends it;
SIGTERM as a scheduler does), resume, and check that the weights and the loss log are bit-identical to a run that
was never interrupted.

    python bench/crash_consistency.py [--trials 20] [--seed 0]

Each trial kills once or twice (the second time during the resume), at a random moment after the run has printed
its settings: in a step, in an evaluation, in the middle of a checkpoint swap. SIGINT and SIGTERM must save the last
completed step and exit 130 or 143; SIGKILL leaves the checkpoint before. Either way `specc train ... --resume`
must finish the run exactly. tests/test_crash.py runs 3 trials of this in the default suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "nanogpt-shakespeare.spec"
# A small model, frequent evaluations: about 60 steps/s here, so a random moment often falls in a checkpoint write.
ARGS = ["--steps", "100", "--eval-every", "7", "--batch", "4", "--set", "d=32", "--set", "layers=1", "--set",
        "heads=2", "--set", "ctx=16", "--set", "dropout=0.1"]  # dropout: the RNG must resume too


def arguments(out: Path, resume: bool = False) -> list[str]:
    """The arguments of `specc` for the run in `out`."""
    return ["train", str(SPEC), "--out", str(out)] + ARGS + (["--resume"] if resume else [])


def command(out: Path, resume: bool = False) -> list[str]:
    specc = Path(sys.executable).parent / "specc"
    base = [str(specc)] if specc.exists() else [sys.executable, "-m", "specdsl.cli"]
    return base + arguments(out, resume)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def reference(out: Path) -> None:
    done = subprocess.run(command(out), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def weights(out: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(out / "last" / "model.safetensors"))


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _interruptible() -> None:
    """The child's SIGINT at its default: started from a background job of a non-interactive shell, this process
    and its children would ignore SIGINT, and a trial would not interrupt anything."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(out: Path, resume: bool, sig: int, rng: random.Random) -> int:
    """Start training (or resuming) and send `sig` at a random moment once the run directory is there; returns
    the exit code."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command(out, resume), env=_env(), stdout=log, stderr=subprocess.PIPE,
                                preexec_fn=_interruptible)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:  # until it prints its settings: the steps follow
            log.seek(0)
            if b"run directory" in log.read():
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode


def saved_step(out: Path) -> str:
    for name in ("last", ".last.old"):
        if (out / name / "trainer.json").exists():
            return str(json.loads((out / name / "trainer.json").read_text())["step"])
    return "none"


def finish_in_a_process(out: Path) -> None:
    done = subprocess.run(command(out, resume=True), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def trial(root: Path, ref: Path, seed: int, finish=finish_in_a_process) -> str:
    """One trial; returns what happened, raises AssertionError if the resumed run differs from the reference.
    `finish(out)` runs the last `--resume` to the end (the test suite runs it in its own process)."""
    rng = random.Random(seed)
    out = root / f"trial{seed}"
    story = []
    for k in range(rng.choice((1, 2))):
        sig = rng.choice((signal.SIGKILL, signal.SIGINT, signal.SIGTERM))
        code = interrupt(out, resume=k > 0, sig=sig, rng=rng)
        story.append(f"{signal.Signals(sig).name} (exit {code}, checkpoint at step {saved_step(out)})")
        if sig != signal.SIGKILL:  # the step under way is saved, then the process exits with 128 + the signal
            assert code in (0, 128 + sig), f"{signal.Signals(sig).name} gave exit code {code}"
    finish(out)
    a, b = weights(out), weights(ref)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "weights differ from the reference"
    assert losses(out) == losses(ref), "the loss log differs from the reference"
    shutil.rmtree(out)
    return ", ".join(story)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference(root / "reference")
        failures = 0
        for i in range(args.trials):
            try:
                story = trial(root, root / "reference", args.seed + i)
                print(f"trial {i:>3}: {story}: bit-identical", flush=True)
            except AssertionError as e:
                failures += 1
                print(f"trial {i:>3}: FAIL: {e}", flush=True)
        print(f"{args.trials - failures}/{args.trials} trials resumed bit-identical "
              f"({'PASS' if failures == 0 else 'FAIL'})")
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
