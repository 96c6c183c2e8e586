"""`specc train`: learning on built-in data, checkpoints that resume exactly and survive SIGKILL, evaluation,
classifiers on digits, several processes, and `specc sample`."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import specdsl
from conftest import SPECS, specc_here

torch = pytest.importorskip("torch")
from specdsl.train.loop import train  # noqa: E402

torch.set_num_threads(1)
TINY = {"d": 32, "layers": 1, "heads": 2, "ctx": 16}
QUICK = {"batch": 4, "eval_every": 10, "eval_batches": 2, "warmup": 5}


def run(out, steps, resume=False, spec="nanogpt-shakespeare.spec", sets=TINY, tensorboard=False, **flags):
    return train(str(SPECS / spec), overrides=dict(sets), flags={**QUICK, "steps": steps, "out": str(out), **flags},
                 resume=resume, progress=False, console=_quiet(), tensorboard=tensorboard)


def _quiet():
    from rich.console import Console
    return Console(file=open(os.devnull, "w"))


def losses(out):
    return [json.loads(line)["train_loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_learns_on_builtin_data_and_writes_the_run(tmp_path):
    summary = run(tmp_path / "r", 60, eval_every=20, lr=1e-2)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert all("train_loss" in r for r in rows) and [r["step"] for r in rows if "val_loss" in r] == [20, 40, 60]
    assert rows[-1]["val_loss"] < rows[0]["train_loss"] - 1.0  # it learns
    assert summary["best_step"] in (20, 40, 60) and summary["best_val_loss"] == min(r["val_loss"] for r in rows
                                                                                    if "val_loss" in r)
    for folder in ("last", "best"):
        names = {p.name for p in (tmp_path / "r" / folder).iterdir()}
        assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors",
                "trainer.json"} <= names
    trainer = json.loads((tmp_path / "r" / "last" / "trainer.json").read_text())
    assert trainer["step"] == 60 and trainer["tokenizer"]["kind"] == "char" and len(trainer["spec_hash"]) == 64
    # One checkpoint's bytes a save: when the last step is the best, last/ links best/'s files (no second write).
    same = {p.name: os.path.samefile(p, tmp_path / "r" / "last" / p.name) for p in (tmp_path / "r" / "best").iterdir()}
    assert all(same.values()) == (summary["best_step"] == 60) and len(same) == 5
    assert (tmp_path / "r" / "spec.spec").read_text() == (SPECS / "nanogpt-shakespeare.spec").read_text()
    plot = ET.fromstring((tmp_path / "r" / "loss.svg").read_text())  # a whole SVG: it parses
    lines = plot.findall("{http://www.w3.org/2000/svg}polyline")
    assert [len(line.get("points").split()) for line in lines] == [60, 3, 3]  # every step; every evaluation


def test_spec_train_section_sets_defaults_and_flags_override_it(tmp_path):
    spec = tmp_path / "nano.spec"
    spec.write_text((SPECS / "nanogpt-shakespeare.spec").read_text()
                    + "train { steps = 6, batch = 4, eval_every = 3, eval_batches = 1, warmup = 2, lr = 2e-3 }\n")

    def config(out, **flags):
        summary = train(str(spec), overrides=TINY, flags={"out": str(out), **flags}, progress=False,
                        console=_quiet())
        return summary, json.loads((out / "run.json").read_text())["config"]

    summary, settings = config(tmp_path / "a")
    assert summary["steps"] == 6 and (settings["batch"], settings["lr"], settings["warmup"]) == (4, 2e-3, 2)
    summary, settings = config(tmp_path / "b", steps=3, lr=5e-4)
    assert summary["steps"] == 3 and (settings["batch"], settings["lr"]) == (4, 5e-4)  # flags win, the rest stays
    with pytest.raises(specdsl.SpecError, match="'lr' must be positive") as bad_flag:
        config(tmp_path / "c", lr=-1.0)
    assert bad_flag.value.errors[0].span.file == "--lr"


def test_same_seed_same_run(tmp_path):
    run(tmp_path / "a", 15, sets={**TINY, "dropout": 0.1})
    run(tmp_path / "b", 15, sets={**TINY, "dropout": 0.1})
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_resume_continues_bit_for_bit(tmp_path):
    # Dropout on, so the resumed run must also restore torch's generator.
    sets = {**TINY, "dropout": 0.1}
    run(tmp_path / "once", 30, sets=sets, decay_steps=30)
    run(tmp_path / "split", 13, sets=sets, decay_steps=30)
    run(tmp_path / "split", 30, sets=sets, decay_steps=30, resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "once")


def test_resume_refuses_another_spec_or_settings(tmp_path):
    run(tmp_path / "r", 5)
    with pytest.raises(specdsl.SpecError, match="batch"):
        run(tmp_path / "r", 10, resume=True, batch=8)
    with pytest.raises(specdsl.SpecError, match="not the one the run was trained from"):
        run(tmp_path / "r", 10, resume=True, spec="gpt2.spec", sets={**TINY, "vocab": 40})
    with pytest.raises(specdsl.SpecError, match="already holds a run"):
        run(tmp_path / "r", 10)


def test_bad_data_or_run_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(specdsl.SpecError, match="cannot create the run directory"):
        run(tmp_path / "file" / "r", 1)
    with pytest.raises(specdsl.SpecError, match="no such file"):
        run(tmp_path / "r", 1, data=str(tmp_path / "missing.txt"))
    (tmp_path / "binary").write_bytes(bytes(range(256)))
    with pytest.raises(specdsl.SpecError, match="not UTF-8 text"):
        run(tmp_path / "r2", 1, data=str(tmp_path / "binary"))


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_loses_nothing(tmp_path, specc_cmd):
    out = tmp_path / "r"
    cmd = specc_cmd + ["train", str(SPECS / "nanogpt-shakespeare.spec"), "--out", str(out), "--steps", "40",
                       "--eval-every", "10", "--batch", "4"] + [f"--set={k}={v}" for k, v in TINY.items()]
    env = {**os.environ, "SPECC_TEST_CHECKPOINT_DELAY": "1.5", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Wait for a complete checkpoint, then for the next one to be half-written, and kill the process there.
    while time.time() < deadline and not (out / "last" / "trainer.json").exists():
        time.sleep(0.05)
    first = json.loads((out / "last" / "trainer.json").read_text())["step"]
    while time.time() < deadline and not (out / ".last.tmp" / "model.safetensors").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / ".last.tmp").exists() and not (out / ".last.tmp" / "trainer.json").exists()
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == first
    env.pop("SPECC_TEST_CHECKPOINT_DELAY")
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed {out} at step {first}" in " ".join(done.stdout.split())
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == 40


def test_early_stopping_and_overfitting_warning(tmp_path):
    # A big model on a sliver of data overfits; patience stops it and the summary names the best step.
    import random
    rng = random.Random(0)
    data = tmp_path / "noise.txt"  # random letters: nothing to generalise, everything to memorise
    data.write_text("".join(rng.choice("abcdefghij ") for _ in range(600)))
    summary = run(tmp_path / "r", 400, sets={"d": 64, "layers": 2, "heads": 2, "ctx": 16}, data=str(data),
                  lr=3e-3, eval_every=10, patience=3, warmup=1)
    assert summary["stopped_early"] and summary["steps"] < 400
    assert summary["overfitting_step"] is not None and summary["best_step"] < summary["steps"]


def test_classifier_learns_digits(tmp_path):
    summary = run(tmp_path / "r", 300, spec="mlp.spec", sets={}, batch=32, lr=3e-3, eval_every=100)
    trainer = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert trainer["val_accuracy"] > 0.85 and summary["best_val_loss"] < 0.6


@pytest.mark.slow
def test_sample_greedy_is_deterministic_and_checks_the_prompt(tmp_path, specc_cmd):
    run(tmp_path / "r", 20)
    args = ["sample", str(tmp_path / "r"), "--prompt", "the ", "--max-new-tokens", "20", "--temperature", "0"]
    a = subprocess.run(specc_cmd + args, capture_output=True, text=True)  # a new process, and this one
    b = specc_here(*args)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("the ") and len(a.stdout) > 20
    bad = specc_here("sample", tmp_path / "r", "--prompt", "Q@Z")
    assert bad.returncode == 2 and "outside the vocabulary" in bad.stderr and "Traceback" not in bad.stderr
    missing = specc_here("sample", tmp_path / "nope")
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


DISTRIBUTED = ["train", str(SPECS / "nanogpt-shakespeare.spec"), "--steps", "8", "--batch", "8", "--eval-every", "8",
               *(f"--set={k}={v}" for k, v in TINY.items())]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The run that DDP and FSDP must match, trained once in this process (the same command, one process)."""
    out = tmp_path_factory.mktemp("one") / "one"
    done = specc_here(*DISTRIBUTED, "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def two_processes(specc_cmd, out, *flags):
    """`specc train` of the distributed test run, with these flags (--nproc 2; --fsdp), in a process of its own."""
    done = subprocess.run(specc_cmd + DISTRIBUTED + ["--out", str(out), *flags], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def ddp_on_one_node(tmp_path_factory, specc_cmd):
    """The run on two processes of one machine (DDP), which two machines of one process each must equal."""
    return two_processes(specc_cmd, tmp_path_factory.mktemp("ddp") / "two", "--nproc", "2")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, specc_cmd, one_process, sharding, request):
    two = request.getfixturevalue("ddp_on_one_node") if not sharding else \
        two_processes(specc_cmd, tmp_path / "two", "--nproc", "2", *sharding)
    a, b = losses(one_process), losses(two)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    # the checkpoint holds whole tensors, whatever the sharding: it loads into one process
    specdsl.train.checkpoint.load_weights_into(specdsl.to_torch(specdsl.load(
        SPECS / "nanogpt-shakespeare.spec", overrides={**TINY, "vocab": 37})), two / "last")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_match_two_processes_on_one(tmp_path, specc_cmd, ddp_on_one_node, rendezvous):
    """Two `specc train --nnodes 2 --nproc 1` started together, as on two machines sharing the run directory: the
    same algorithm as --nproc 2 (DDP over gloo, two ranks), so the same losses and checkpoint, bit for bit. The
    node that holds rank 0 prints the run; the other stays quiet and exits 0."""
    out = tmp_path / "shared"
    meet = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "test"]
    nodes = [subprocess.Popen(specc_cmd + DISTRIBUTED + ["--out", str(out), *meet]
                              + (["--node-rank", str(k)] if rendezvous == "static" else []),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for k in (0, 1)]
    said = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], said
    assert losses(out) == losses(ddp_on_one_node)
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (out / "last" / name).read_bytes() == (ddp_on_one_node / "last" / name).read_bytes()
    printing = [k for k, (stdout, _) in enumerate(said) if "summary" in stdout]
    assert len(printing) == 1 and said[1 - printing[0]] == ("", "")  # static: node 0; c10d: whichever got rank 0
    assert rendezvous == "c10d" or printing == [0]


def _can_hide_a_folder() -> bool:
    """Whether this machine lets a process mount over a folder in a mount namespace of its own (unprivileged user
    namespaces): how a test shows a node a filesystem the others do not share."""
    import shutil
    return bool(shutil.which("unshare")) and subprocess.run(["unshare", "--mount", "--map-root-user", "true"],
                                                            capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or not _can_hide_a_folder(), reason="unshare --mount --map-root-user")
def test_a_node_that_does_not_share_the_run_directory_stops_the_run_with_its_name(tmp_path, specc_cmd):
    """Node 1 runs where an empty filesystem is mounted over the folder of --out, as a machine without the shared
    filesystem would see it: after waiting for it (SPECC_SHARED_WAIT_S, 60 s by default; 2 s here) both nodes stop
    with exit code 2 and say why, instead of hanging or crashing in a read."""
    shared = tmp_path / "shared"
    shared.mkdir()
    meet = ["--out", str(shared / "run"), "--nproc", "1", "--nnodes", "2",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    node1 = ["unshare", "--mount", "--map-root-user", "sh", "-c", f'mount -t tmpfs none "{shared}" && exec "$@"',
             "node1"]
    nodes = [subprocess.Popen(prefix + specc_cmd + DISTRIBUTED + meet + ["--node-rank", str(k)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "SPECC_SHARED_WAIT_S": "2"})
             for k, prefix in ((0, []), (1, node1))]
    said = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [2, 2], said
    cannot = f"cannot see the run directory rank 0 started: no folder '{shared / 'run'}'"
    assert said[0][1].startswith("--out: error: rank 1 (on ") and cannot in said[0][1]
    assert said[1][1].startswith(f"--out: error: {cannot}") and "filesystem they share" in said[1][1]
    assert "Traceback" not in said[0][1] + said[1][1]


def test_lenet_trains_on_32x32_digits_and_bf16_and_accumulation_run(tmp_path):
    lenet = run(tmp_path / "lenet", 30, spec="lenet5.spec", sets={}, batch=16, lr=3e-3, eval_every=30)
    assert lenet["best_val_loss"] < 2.3  # below chance (ln 10 = 2.30)
    bf16 = run(tmp_path / "bf16", 10, dtype="bf16", accum=2)
    assert bf16["steps"] == 10 and bf16["best_val_loss"] < 4.0


def test_decay_groups_exclude_biases_norms_and_embeddings():
    from specdsl.train.loop import _decay_groups
    c = specdsl.load(SPECS / "nanogpt-shakespeare.spec", overrides=TINY)
    module = specdsl.to_torch(c)
    decay, no_decay = _decay_groups(module, c.model, 0.1)
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n, p in module.named_parameters() if p.dim() == 2 and n not in ("wte.weight",
                                                                                             "wpe.weight")}
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "h.0.attn.qkv.bias"} <= {names[id(p)]
                                                                                 for p in no_decay["params"]}


BERT_TINY = {"d": 32, "layers": 1, "heads": 2, "ffn": 64, "ctx": 16, "dropout": 0.0}


@pytest.mark.slow
def test_bidirectional_models_learn_masked_tokens_not_next_tokens(tmp_path):
    out = tmp_path / "r"
    summary = train(str(SPECS / "bert.spec"), preset="mlm", overrides=BERT_TINY,
                    flags={**QUICK, "batch": 16, "steps": 120, "eval_every": 40, "lr": 3e-3, "out": str(out)},
                    progress=False, console=_quiet())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    tokenizer = json.loads((out / "data" / "tokenizer.json").read_text())
    assert tokenizer["mask"] is True  # [MASK] is the id after the 37 characters: vocab 38
    assert json.loads((out / "run.json").read_text())["overrides"]["vocab"] == len(tokenizer["chars"]) + 1
    # it learns (from the uniform ln 38 = 3.64 to about the unigram level, 2.9) but cannot copy its answers: with
    # masks that hide nothing (or next-token training) it falls to 0.26 within these steps (measured)
    assert evals[-1]["val_loss"] < math.log(38) - 0.5 and evals[-1]["val_loss"] > 1.5
    assert evals[-1]["val_accuracy"] > 0.1 and summary["best_val_loss"] == min(r["val_loss"] for r in evals)
    refused = specc_here("sample", out)
    assert refused.returncode == 2 and "masked language model" in refused.stderr


def test_masking_follows_bert():
    from specdsl.train.data import IGNORE, Tokenizer, mask_tokens
    tokenizer = Tokenizer("char", "abcdefghij", mask=True)
    assert (tokenizer.vocab_size, tokenizer.mask_id) == (11, 10) and tokenizer.decode([0, 10, 1]) == "a[MASK]b"
    x = torch.randint(10, (64, 1024), generator=torch.Generator().manual_seed(0))
    inputs, targets = mask_tokens(x, tokenizer, torch.Generator().manual_seed(1))
    chosen = targets != IGNORE
    assert torch.equal(targets[chosen], x[chosen]) and torch.equal(inputs[~chosen], x[~chosen])
    n = chosen.sum().item()
    assert abs(n / x.numel() - 0.15) < 0.005
    masked = (inputs[chosen] == 10).sum().item() / n
    kept = (inputs[chosen] == x[chosen]).sum().item() / n  # 10% kept, plus a tenth of the random 10%
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.11) < 0.01 and inputs.max() == 10
    again, _ = mask_tokens(x, tokenizer, torch.Generator().manual_seed(1))
    assert torch.equal(inputs, again)  # the generator decides everything: a resumed run masks the same way


def test_a_run_outside_a_terminal_prints_a_status_line_every_log_every_steps(tmp_path):
    import io

    from rich.console import Console
    log = io.StringIO()
    train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=TINY,
          flags={**QUICK, "steps": 20, "out": str(tmp_path / "r")}, console=Console(file=log, width=120),
          log_every=5)
    status = [line for line in log.getvalue().splitlines() if "tok/s" in line and "eta" in line]
    assert [int(line.split()[1].split("/")[0]) for line in status] == [5, 10, 15]  # not after the last step
    assert all(line.split()[1].endswith("/20") and "loss" in line for line in status)


def test_tensorboard_events_show_every_step_once_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "r"
    for steps, resume in ((8, False), (12, True)):
        train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=TINY, resume=resume, tensorboard=True,
              flags={**QUICK, "steps": steps, "eval_every": 4, "out": str(out)}, progress=False, console=_quiet())
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss/train_step")]
    assert steps == list(range(1, 13)) and [e.step for e in events.Scalars("loss/val")] == [4, 8, 12]
    assert [e.value for e in events.Scalars("loss/train_step")] == pytest.approx(losses(out), rel=1e-6)


def test_tensorboard_without_its_package_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else find_spec(name, *a))
    with pytest.raises(specdsl.SpecError, match="needs the tensorboard package") as refused:
        run(tmp_path / "r", 5, tensorboard=True)
    assert "pip install tensorboard" in refused.value.errors[0].hint and not (tmp_path / "r").exists()
