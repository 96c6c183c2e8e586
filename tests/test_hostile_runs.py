"""Run directories under careless and hostile use (issue 9): specc never writes into or deletes from a folder that
is not its own run, never writes through a link, checks everything before writing, refuses a resume whose spec,
data or settings changed, keeps one writer per run, and reports every failure as one message, not a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import specdsl
from conftest import SPECS, specc_here

torch = pytest.importorskip("torch")
from specdsl.train import rundir  # noqa: E402
from specdsl.train.loop import train  # noqa: E402

torch.set_num_threads(1)
TINY = {"d": 32, "layers": 1, "heads": 2, "ctx": 16}
QUICK = {"batch": 4, "eval_every": 5, "eval_batches": 1, "warmup": 1}
NANO = str(SPECS / "nanogpt-shakespeare.spec")


def run(out, steps=5, resume=False, spec=NANO, sets=TINY, **flags):
    return train(str(spec), overrides=dict(sets), flags={**QUICK, "steps": steps, "out": str(out), **flags},
                 resume=resume, progress=False, console=_quiet())


def _quiet():
    from rich.console import Console
    return Console(file=open(os.devnull, "w"))


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (links as links) with its bytes: what must not change."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = ("link", os.readlink(path)) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run to copy (training is the slow part)."""
    out = tmp_path_factory.mktemp("runs") / "r"
    run(out, 10)
    return out


def copy_run(trained, tmp_path) -> Path:
    out = tmp_path / "r"
    shutil.copytree(trained, out)
    return out


# ---- a folder that is not ours (defect 2) ----

def test_out_never_writes_into_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "photos"
    for name in ("best/a.jpg", "last/b.jpg", "data/c.txt", "summary.json", "metrics.jsonl"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    before = snapshot(folder)
    with pytest.raises(specdsl.SpecError, match="not a run directory") as refused:
        run(folder)
    assert refused.value.errors[0].span.file == "--out"
    assert snapshot(folder) == before


def test_a_spec_alone_cannot_pick_a_folder_and_a_file_to_copy(tmp_path):
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    secret = tmp_path / "secret.txt"
    secret.write_text("password = hunter2\n" * 50)
    spec = tmp_path / "evil.spec"
    spec.write_text(Path(NANO).read_text().replace('use "std/transformer.spec"', f'use "{SPECS}/std/transformer.spec"')
                    + f'train {{ out = "{victim}", data = "{secret}" }}\n')
    before = snapshot(victim)
    with pytest.raises(specdsl.SpecError, match="not a run directory"):
        train(str(spec), overrides=TINY, flags={**QUICK, "steps": 2}, progress=False, console=_quiet())
    assert snapshot(victim) == before


# ---- a refused train touches nothing (defect 3) ----

def test_a_refused_train_leaves_the_run_as_it_was(tmp_path, trained):
    out = copy_run(trained, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("completely different text, other characters: XYZ 123\n" * 40)
    before = snapshot(out)
    with pytest.raises(specdsl.SpecError, match="already holds a run"):
        run(out, 10, data=str(other))
    assert snapshot(out) == before


# ---- links planted in a run (defect 5) ----

@pytest.mark.parametrize("member", ["summary.json", "spec.spec", "metrics.jsonl", "loss.svg", "data"])
def test_resume_refuses_a_run_holding_links_and_writes_through_none(tmp_path, trained, member):
    out = copy_run(trained, tmp_path)
    victim = tmp_path / "victim"
    (victim.mkdir() if member == "data" else victim.write_text("precious"))
    target = out / member
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.symlink_to(victim)
    before = snapshot(tmp_path / "victim") if member == "data" else victim.read_text()
    with pytest.raises(specdsl.SpecError, match="symbolic link"):
        run(out, 20, resume=True)
    assert (snapshot(victim) if member == "data" else victim.read_text()) == before


# ---- a resume refuses changed inputs (defect 7), and is self-contained ----

def test_resume_refuses_a_changed_data_file(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sees the moon. " * 300)
    out = tmp_path / "r"
    run(out, 5, data=str(data))
    data.write_text("the dog sees the moon! " * 300)  # same path, other text: the tokenizer would change
    with pytest.raises(specdsl.SpecError, match="corpus.txt' changed since the run started") as refused:
        run(out, 10, resume=True, data=str(data))
    assert refused.value.errors[0].span.file == "--data"
    data.unlink()  # the run has its own copy of the tokens: without the file it resumes
    assert run(out, 10, resume=True)["steps"] == 10


@pytest.mark.slow
def test_resume_refuses_a_changed_used_file_and_sample_uses_the_runs_own_copy(tmp_path):
    shutil.copytree(SPECS, tmp_path / "specs")
    spec, std = tmp_path / "specs" / "nanogpt-shakespeare.spec", tmp_path / "specs" / "std" / "transformer.spec"
    out = tmp_path / "r"
    run(out, 5, spec=spec)
    std.write_text(std.read_text() + "\n# edited after the run started\n")
    with pytest.raises(specdsl.SpecError, match="transformer.spec' is not as it was"):
        run(out, 10, resume=True, spec=spec)
    sample = specc_here("sample", out, "--prompt", "the ", "--max-new-tokens", "5")
    assert sample.returncode == 0, sample.stderr  # compiled from the run's sources, not the changed file


def test_resume_refuses_other_set_values_including_vocab(tmp_path, trained):
    out = copy_run(trained, tmp_path)
    with pytest.raises(specdsl.SpecError, match="--set vocab: 37 -> 50"):
        run(out, 20, resume=True, sets={**TINY, "vocab": 50})
    with pytest.raises(specdsl.SpecError, match="--set d: 32 -> 64"):
        run(out, 20, resume=True, sets={**TINY, "d": 64})
    assert run(out, 12, resume=True, sets={})["steps"] == 12  # omitted values are the run's


def test_export_of_a_checkpoint_refuses_another_architecture(tmp_path, trained):
    done = specc_here("export", NANO, "--checkpoint", trained, "--onnx", "-o", tmp_path / "m.onnx", "--set", "heads=4")
    assert done.returncode == 2 and "--set heads: 2 -> 4" in done.stderr and not (tmp_path / "m.onnx").exists()


# ---- damaged runs: named errors, not tracebacks ----

@pytest.mark.parametrize("damage", ["weights", "optimizer", "trainer", "record", "tokenizer"])
def test_damaged_files_on_resume_are_named(tmp_path, trained, damage):
    out = copy_run(trained, tmp_path)
    path = {"weights": "last/model.safetensors", "optimizer": "last/optimizer.safetensors",
            "trainer": "last/trainer.json", "record": "run.json", "tokenizer": "data/tokenizer.json"}[damage]
    data = (out / path).read_bytes()
    (out / path).write_bytes(data[: len(data) // 2])
    with pytest.raises(specdsl.SpecError) as refused:
        run(out, 20, resume=True)
    assert path.split("/")[0] in str(refused.value)


def test_a_checkpoint_of_another_shape_is_refused_not_broadcast(tmp_path, trained):
    from safetensors.torch import load_file, save_file
    out = copy_run(trained, tmp_path)
    weights = load_file(str(out / "last" / "model.safetensors"))
    weights["wte.weight"] = weights["wte.weight"][:1]  # [1, d]: copy_ would broadcast it over every row
    save_file(weights, str(out / "last" / "model.safetensors"))
    with pytest.raises(specdsl.SpecError, match="shapes differ"):
        run(out, 20, resume=True)


# ---- checkpoint swaps interrupted anywhere (defect 8) ----

def test_a_checkpoint_swap_interrupted_anywhere_twice_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    """Every rename and delete of two successive swaps is made to fail in turn (a crash there); after each, the
    checkpoint that `complete` finds is whole, and it is the newest one whose swap reached its second rename."""
    def fill(step):
        def write(folder):
            (folder / "weights").write_text(str(step))
            (folder / rundir.MARKER).write_text(json.dumps({"step": step}))
        return write

    real = {"rename": os.rename, "rmtree": shutil.rmtree}
    calls = []

    def crash_at(n):
        def wrap(name):
            def f(*a, **k):
                calls.append(name)
                if len(calls) == n:
                    raise KeyboardInterrupt  # the process dies here
                return real[name](*a, **k)
            return f
        monkeypatch.setattr(rundir.os, "rename", wrap("rename"))
        monkeypatch.setattr(rundir.shutil, "rmtree", wrap("rmtree"))

    def state(run):
        found = run.complete("last")
        return None if found is None else ((found / "weights").read_text(), json.loads(
            (found / rundir.MARKER).read_text())["step"])

    for first in range(1, 8):
        for second in range(1, 8):
            folder = tmp_path / f"{first}-{second}"
            folder.mkdir()
            run = rundir.RunDir(folder)
            monkeypatch.undo()
            run.swap_in("last", fill(1))
            for n, step in ((first, 2), (second, 3)):
                calls.clear()
                crash_at(n)
                try:
                    run.swap_in("last", fill(step))
                except KeyboardInterrupt:
                    pass
                monkeypatch.undo()
                found = state(run)
                assert found is not None and found[0] == str(found[1]), (first, second, os.listdir(folder))
            run.swap_in("last", fill(4))  # a whole swap afterwards, then opening the run, cleans up
            run.clean_leftovers()
            assert state(run) == ("4", 4) and sorted(os.listdir(folder)) == ["last"]


# ---- one writer (defect 10) ----

def test_a_second_writer_is_refused(tmp_path, trained):
    out = copy_run(trained, tmp_path)
    holder = rundir.RunDir(out)
    holder.lock()
    try:
        with pytest.raises(specdsl.SpecError, match=f"being written by another specc process \\(pid {os.getpid()}"):
            run(out, 20, resume=True)
    finally:
        holder.unlock()
    assert run(out, 12, resume=True)["steps"] == 12


def test_a_run_killed_before_its_first_checkpoint_starts_over_without_appending(tmp_path, trained):
    out = copy_run(trained, tmp_path)
    for name in ("last", "best", "summary.json", "loss.svg"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    run(out, 10)
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 11))


# ---- settings and numbers (defect 12) ----

def test_infinite_settings_are_refused(tmp_path):
    for name in ("lr", "weight_decay", "grad_clip"):
        with pytest.raises(specdsl.SpecError, match="must be a finite number") as refused:
            run(tmp_path / name, **{name: float("inf")})
        assert refused.value.errors[0].span.file == "--" + name.replace("_", "-")
    assert not any(tmp_path.iterdir())


def test_a_diverging_run_stops_with_an_error_and_writes_valid_json(tmp_path):
    with pytest.raises(specdsl.SpecError, match="training diverged at step"):
        run(tmp_path / "r", 20, lr=1e30, grad_clip=0.0)
    for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    assert json.loads(rundir.dumps({"loss": float("nan"), "best": [float("inf")]})) == {"loss": None, "best": [None]}


# ---- data ----

def test_bad_data_files_are_clear_errors_before_anything_is_written(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "notes.md").write_text("not a .txt")
    cases = {str(empty): "is empty", "/dev/zero": "not a regular file", str(fifo): "not a regular file",
             str(nothing): "a folder with no .txt files", str(short): "too short"}
    for data, message in cases.items():
        with pytest.raises(specdsl.SpecError, match=message) as refused:
            run(tmp_path / "out", data=data)
        assert refused.value.errors[0].span.file == "--data"
        assert not (tmp_path / "out").exists()


def test_more_than_65535_distinct_characters_train(tmp_path):
    chars = "".join(chr(c) for c in range(0x4E00, 0x30000) if chr(c).isprintable())[:66_000]
    assert len(set(chars)) == 66_000
    data = tmp_path / "wide.txt"
    data.write_text(chars * 3)
    summary = run(tmp_path / "r", 2, data=str(data), sets={**TINY, "d": 8, "heads": 1}, eval_every=2)
    tokenizer = rundir.RunDir(tmp_path / "r").tokenizer()
    from specdsl.train.data import TokenData
    ids = TokenData(tmp_path / "r" / "data", tokenizer).train
    assert summary["steps"] == 2 and ids.dtype.itemsize == 4
    assert tokenizer.decode(ids[:500].tolist()) == (chars * 3)[:500]


def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path):
    with pytest.raises(specdsl.SpecError, match="GiB for its token ids") as refused:
        run(tmp_path / "r", batch=10**12, accum=1)
    assert refused.value.errors[0].span.file == "--batch" and not (tmp_path / "r").exists()


# ---- the command line: one message, the right exit code ----

@pytest.mark.slow
def test_nproc_reports_one_error_once_without_a_traceback(tmp_path, specc_cmd):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    done = subprocess.run(specc_cmd + ["train", NANO, "--nproc", "2", "--steps", "2", "--out", str(folder)]
                          + [f"--set={k}={v}" for k, v in TINY.items()], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("not a run directory") == 1 and "Traceback" not in done.stderr
    assert sorted(os.listdir(folder)) == ["keep.txt"]
    zero = subprocess.run(specc_cmd + ["train", NANO, "--nproc", "0"], capture_output=True, text=True)
    assert zero.returncode == 2 and "Traceback" not in zero.stderr


@pytest.mark.slow
@pytest.mark.parametrize("missing, args, extra", [
    ("torch", ["train", NANO, "--out", "{tmp}/r"], "train"), ("torch", ["sample", "{tmp}"], "train"),
    ("torch", ["export", NANO, "--onnx", "-o", "{tmp}/m.onnx"], "train"),
    ("onnx", ["inspect", "{tmp}/m.onnx"], "onnx"), ("onnx", ["generate", "{tmp}/m.onnx"], "onnx")])
def test_a_missing_extra_says_what_to_install(tmp_path, missing, args, extra):
    """As after `pip install specdsl` without extras: the module cannot be imported."""
    argv = ["specc"] + [a.format(tmp=tmp_path) for a in args]
    code = f"import sys; sys.modules[{missing!r}] = None; sys.argv = {argv!r}; from specdsl.cli import run; run()"
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"needs {missing}" in done.stderr and f"pip install 'specdsl[{extra}]'" in done.stderr


def test_an_internal_error_is_one_line_unless_debug(monkeypatch, capsys):
    from specdsl import cli
    from specdsl.train import loop

    def broken(*a, **k):
        raise ValueError("something inside specc went wrong\nsecond line")
    monkeypatch.setattr(loop, "train", broken)
    for argv, traceback in ((["specc", "train", NANO], False), (["specc", "--debug", "train", NANO], True)):
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(cli, "_debug", False)
        if traceback:
            with pytest.raises(ValueError):
                cli.run()
            continue
        with pytest.raises(SystemExit) as exited:
            cli.run()
        err = capsys.readouterr().err
        assert exited.value.code == 1 and "internal error: ValueError: something inside specc went wrong" in err
        assert "second line" not in err and "--debug" in err
