"""What a training run costs besides its iterations, and the memory it takes: `specc train` against nanoGPT's
train.py (bench/nanogpt_train.py: the same program condensed), process against process, on tinyshakespeare with
nanoGPT's CPU settings (4 layers, 4 heads, d=128, context 64, batch 12; evaluation on 20 batches of each split).

Method. Each run is a fresh process, launched and waited for by this script, which takes its wall time (launch to
exit) and its peak resident memory (os.wait4's ru_maxrss, the child's own). Each program records the time of every
iteration (forward, backward, clip, AdamW step; evaluation excluded), of every evaluation and of its checkpoint
writes. Then, per run:
    fixed cost = wall - iterations x the run's median iteration time
(the issue's definition: what a run costs beyond its iterations, evaluations included, robust to a slow spell in
the middle of a run). nanoGPT evaluates at iteration 0 as well (one more evaluation than specc, which evaluates
after every eval_every steps and after the last) and runs max_iters + 1 iterations; so the fixed cost is also shown
without evaluations (wall - the sum of the iteration times - the sum of the evaluation times), the part that is
only process start, imports, data, model, optimizer, checkpoints and reports.
The two programs alternate, `--rounds` runs each, the order flipping each round; figures are medians over runs.
nanoGPT's prepare.py (tokenizing into train.bin/val.bin, once per dataset) is timed apart; specc tokenizes at
every new run, so its fixed cost includes that.

Each child runs with PYTHONDONTWRITEBYTECODE unset (this sandbox sets it; a user's install has .pyc files, and one
unreported run of each program writes them first) and OMP_NUM_THREADS=--threads (default 1: two threads on a
2-core machine shared with other work slow each step several times over, and more in one run than another).

specc's fixed cost is broken down by timers the child puts around the stages of `specc train` (train/session.py,
train/loop.py, train/checkpoint.py, train/report.py); each figure is exclusive of the stages inside it, "other" is
what no timer covers (interpreter start, the CLI, the lock, exit).

Goals (issue 13, item 2): fixed cost per run <= nanoGPT's, median iteration time <= nanoGPT's, peak RSS <= nanoGPT's.

    python bench/run_cost.py [--data ../shared/data/tinyshakespeare.txt] [--iters 500] [--eval-every 250]
                             [--rounds 3] [--threads 1] [--quick] [--compare OTHER_SPECC_TREE]
The exit code is 0 whatever the result.
"""

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "nanogpt-shakespeare.spec"
NANOGPT = ROOT / "bench" / "nanogpt_train.py"


# ---- the child: `specc train` with timers around its stages ----

def _timed_specc(report: str, argv: list[str]) -> None:
    """Run `specc ARGV` as the console script does (cli.run_process) with a timer around each stage; write the
    timings to `report` at exit."""
    entered = time.time()
    launched = float(os.environ["RUN_COST_LAUNCHED"])
    totals: dict[str, float] = {"process start": entered - launched}
    stack: list[float] = []  # the inner stages' time, to subtract from the stage that holds them

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner, spent = stack.pop(), time.perf_counter() - started
                totals[label] = totals.get(label, 0.0) + spent - inner
                if stack:
                    stack[-1] += spent
        return wrapper

    started = time.perf_counter()
    import specdsl.cli as cli
    totals["import specdsl.cli"] = time.perf_counter() - started
    started = time.perf_counter()
    from specdsl.train import checkpoint, corpus, loop, session
    from specdsl.train import report as report_
    totals["import the train path (torch, ...)"] = time.perf_counter() - started
    for module, name, label in [
        (session, "load", "compile the spec"), (session, "to_torch", "build the module"),
        (session, "splits", "tokenize the corpus"), (corpus.Corpus, "fingerprint", "fingerprint the data"),
        (loop, "prepare", "prepare (the rest)"), (loop, "start", "write run.json, sources, data"),
        (loop.Trainer, "build", "build optimizer and task"), (report_, "print_settings", "settings table"),
        (loop.Trainer, "evaluate", "evaluations"), (checkpoint, "capture", "checkpoint capture"),
        (checkpoint, "save", "checkpoint writes"),
        (checkpoint, "duplicate", "checkpoint writes"), (report_, "plot_svg", "loss.svg"),
        (report_, "metrics_rows", "loss.svg"), (loop.Trainer, "summarize", "summary"),
        (loop.Trainer, "fit", "training loop (the rest)"), (loop.Trainer, "step", "iterations"),
    ]:
        if hasattr(module, name):  # an older specc (--compare) may lack a stage
            setattr(module, name, timed(label, getattr(module, name)))
    session.Tokenizer.fit_texts = classmethod(timed("character set", session.Tokenizer.fit_texts.__func__))
    sys.argv = ["specc", *argv]
    loop.train = timed("train (the rest)", loop.train)

    def write_report():  # an atexit handler: cli.run_process runs them, then ends the process
        with open(report, "w") as f:
            json.dump({"stages": totals, "finished": time.time()}, f)
    atexit.register(write_report)
    (getattr(cli, "run_process", None) or cli.run)()  # an older specc (--compare) has only run


# ---- the parent ----

def _launch(command: list[str], env: dict) -> dict:
    """Run a child; its wall time and peak RSS (os.wait4: this child's own, not the maximum over all children)."""
    launched = time.time()
    env = {**env, "RUN_COST_LAUNCHED": repr(launched)}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    ended = time.time()
    wall = ended - launched
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if child.returncode:
        sys.exit(f"{' '.join(command)} failed ({child.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "ended": ended, "peak_rss_mib": usage.ru_maxrss / 1024}


def run_specc(data: Path, work: Path, args, env: dict, root: Path = ROOT) -> dict:
    out, report = work / "specc-run", work / "specc.json"
    spec = root / SPEC.relative_to(ROOT)
    result = _launch([sys.executable, __file__, "--timed-specc", str(report), "--", "train", str(spec), "--data",
                      str(data), "--steps", str(args.iters), "--eval-every", str(args.eval_every), "--out", str(out)],
                     {**env, "PYTHONPATH": str(root)})
    timings = json.loads(report.read_text())
    stages = {**timings["stages"], "interpreter exit": result["ended"] - timings["finished"]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_s"] for r in rows]
    evals = sum(1 for r in rows if "val_loss" in r)
    stages["other"] = result["wall_s"] - sum(stages.values())
    return {**result, "steps": steps, "eval_s": stages["evaluations"], "evals": evals,
            "stages": stages}


def run_nanogpt(prepared: Path, work: Path, args, env: dict) -> dict:
    out, report = work / "nanogpt-out", work / "nanogpt.json"
    result = _launch([sys.executable, str(NANOGPT), "--data", str(prepared), "--out", str(out), "--max_iters",
                      str(args.iters), "--eval_interval", str(args.eval_every), "--report", str(report)], env)
    child = json.loads(report.read_text())
    return {**result, "steps": child["step_s"], "eval_s": sum(child["eval_s"]), "evals": len(child["eval_s"]),
            "save_s": sum(child["save_s"])}


def summarize(run: dict) -> dict:
    median = statistics.median(run["steps"])
    return {**run, "median_step_s": median, "fixed_s": run["wall_s"] - len(run["steps"]) * median,
            "outside_s": run["wall_s"] - sum(run["steps"]) - run["eval_s"]}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(runs: dict[str, list[dict]], prepare_s: float, args) -> None:
    print(f"\n{'(medians over ' + str(args.rounds) + ' runs)':30}{'specc train':>14}{'nanoGPT':>14}{'ratio':>9}")
    rows = [("wall time, s", "wall_s", 1), ("iterations", None, 1), ("evaluations", "evals", 1),
            ("median iteration, ms", "median_step_s", 1e3), ("fixed cost, s", "fixed_s", 1),
            ("  of which evaluations, s", "eval_s", 1), ("fixed cost w/o evaluations, s", "outside_s", 1),
            ("peak RSS, MiB", "peak_rss_mib", 1)]
    ratios = {}
    for label, key, scale in rows:
        if key is None:
            ours, theirs = (len(r[0]["steps"]) for r in (runs["specc"], runs["nanogpt"]))
        else:
            ours, theirs = (_median(runs[name], key) * scale for name in ("specc", "nanogpt"))
        ratios[key] = ours / theirs if theirs else float("nan")
        print(f"{label:30}{ours:>14,.3f}{theirs:>14,.3f}{ratios[key]:>9.3f}")
    for name in [n for n in runs if n not in ("specc", "nanogpt")]:
        print(f"{name}: " + ", ".join(f"{label.strip()} {_median(runs[name], key) * scale:,.3f}"
                                       for label, key, scale in rows if key is not None))
    print(f"nanoGPT's prepare.py (once per dataset, not in its runs): {prepare_s:.2f} s; its checkpoint writes "
          f"{_median(runs['nanogpt'], 'save_s'):.3f} s a run")
    stages = runs["specc"][0]["stages"]
    print("\nspecc train's fixed cost by stage (median s over runs; 'iterations' is their sum, not fixed cost):")
    for label in sorted(stages, key=lambda k: -statistics.median(r["stages"][k] for r in runs["specc"])):
        print(f"  {label:38}{statistics.median(r['stages'][label] for r in runs['specc']):>8.3f}")
    print()
    for key, what in (("fixed_s", "fixed cost per run"), ("outside_s", "fixed cost without evaluations"),
                      ("median_step_s", "median iteration time"), ("peak_rss_mib", "peak RSS")):
        print(f"{'PASS' if ratios[key] <= 1.0 else 'FAIL'}  {what}: specc / nanoGPT = {ratios[key]:.3f} "
              "(goal <= 1)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--iters", type=int, default=500, help="iterations per run (default 500)")
    ap.add_argument("--eval-every", type=int, default=250, help="evaluation interval (default 250, nanoGPT's)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each program, alternating (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both programs (default 1)")
    ap.add_argument("--quick", action="store_true", help="40 iterations, evaluation every 20, 2 rounds")
    ap.add_argument("--compare", metavar="ROOT", help="another specc source tree (an older commit) to alternate "
                    "with: its figures are printed beside these")
    args = ap.parse_args()
    if args.quick:
        args.iters, args.eval_every, args.rounds = 40, 20, 2
    data = Path(args.data)
    if not data.is_file():
        print(f"no data at {data}: pass --data (tinyshakespeare.txt, 1,115,394 bytes)")
        return 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    print(f"{args.iters} iterations a run, evaluation every {args.eval_every} (20 batches a split), "
          f"{args.threads} thread(s), {args.rounds} alternating rounds; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared, started = Path(tmp) / "shakespeare_char", time.perf_counter()
        subprocess.run([sys.executable, str(NANOGPT), "--prepare", str(data), "--data", str(prepared)], env=env,
                       check=True)
        prepare_s = time.perf_counter() - started
        programs = {"specc": lambda w: run_specc(data, w, args, env),
                    "nanogpt": lambda w: run_nanogpt(prepared, w, args, env)}
        if args.compare:
            programs["specc (compare)"] = lambda w: run_specc(data, w, args, env, Path(args.compare).resolve())
        runs: dict[str, list[dict]] = {name: [] for name in programs}
        for r in range(-1, args.rounds):  # round -1 writes the .pyc files and warms the page cache: not reported
            for name in list(programs) if r % 2 == 0 else list(programs)[::-1]:
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    result = summarize(programs[name](Path(work)))
                if r >= 0:
                    runs[name].append(result)
                    print(f"round {r + 1} {name:16} wall {result['wall_s']:6.2f} s  fixed {result['fixed_s']:5.2f} s  "
                          f"iteration {result['median_step_s'] * 1e3:6.2f} ms  peak RSS "
                          f"{result['peak_rss_mib']:6.1f} MiB", flush=True)
    report(runs, prepare_s, args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--timed-specc":
        sys.path.insert(0, str(ROOT))
        _timed_specc(sys.argv[2], sys.argv[sys.argv.index("--") + 1:])
    else:
        sys.exit(main())
