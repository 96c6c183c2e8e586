"""How fast is specc? In-process analysis and the whole `specc compile` process, against Hugging Face
meta-device models.

What is measured, all in one run (the machine is shared and noisy, so competitors are timed alternately, never
in separate runs, and every reported figure is a median):

* specc in process: `specdsl.load(spec)` -> `.analysis.total`, for GPT-2 small, LLaMA-2 70B and Mixtral 8x7B.
  "cold" is the first call for that spec in this process (the first spec also pays for building the grammar);
  "warm" is the median of the calls after it, which reuse the parse cache (file read + hash, then elaboration and
  analysis); "nocache" is the median of calls with the parse cache emptied first (parse + elaborate + analyse).
* Hugging Face: `AutoModelForCausalLM.from_config(cfg)` under `torch.device("meta")` (no weights allocated, no
  network, never from_pretrained), median of a few calls after one unreported warm-up. The HF call and batches of
  specc calls alternate within each repetition. The parameter counts of the two are compared too.
* The whole process `specc compile specs/gpt4-moe.spec --json` (the console script next to sys.executable),
  alternated with a bare `python -c pass` baseline, medians after one warm-up each.

Goals checked: every spec under 5 ms in process (warm median), the whole compile process under 0.5 s, and specc at
least 20x faster than meta-device instantiation (HF median / specc warm median) for every model.

Usage: python bench/compile_speed.py [--json] [--specs DIR] [--reps N] [--calls N] [--runs N]
With --json the table goes to stderr and one JSON object to stdout. The exit code is 0 whatever the result.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # time the working tree's specdsl

import specdsl  # noqa: E402
import specdsl.parse  # noqa: E402

# (label, spec file, preset, HF config class and kwargs, reference count)
MODELS = [
    ("GPT-2 small", "gpt2.spec", None, "GPT2Config", {}, 124_439_808),
    ("LLaMA-2 70B", "llama.spec", "llama2-70b", "LlamaConfig",
     {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
      "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False}, 68_976_648_192),
    ("Mixtral 8x7B", "mixtral.spec", None, "MixtralConfig",
     {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000},
     46_702_792_704),
]
GOAL_IN_PROCESS_MS, GOAL_PROCESS_S, GOAL_RATIO = 5.0, 0.5, 20.0


def ms_since(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


def time_load(path: Path, preset: str | None, n: int, nocache: bool = False) -> list[float]:
    times = []
    for _ in range(n):
        if nocache:
            specdsl.parse._CACHE.clear()
        t0 = time.perf_counter_ns()
        _ = specdsl.load(path, preset=preset).analysis.total
        times.append(ms_since(t0))
    return times


def bench_in_process(models: list, reps: int, calls: int, skipped: list) -> list[dict]:
    rows, kept = [], []
    for model in models:  # cold: the first call for each spec, before torch is imported
        label, path, preset, _, _, ref = model
        t0 = time.perf_counter_ns()
        try:
            total = specdsl.load(path, preset=preset).analysis.total
            cold = ms_since(t0)
        except specdsl.SpecError as e:
            skipped.append((label, path, f"specc could not load it: {str(e).splitlines()[0]}"))
            continue
        kept.append(model)
        rows.append({"model": label, "spec": str(path), "preset": preset, "specc_total": total, "reference": ref,
                     "specc_cold_ms": cold, "warm": [], "nocache": [], "hf": []})

    import torch  # the HF side only
    import transformers

    models = kept
    for row, (*_, cfg_name, cfg_kwargs, _) in zip(rows, models):  # one unreported HF warm-up, and its count
        row["cfg"] = getattr(transformers, cfg_name)(**cfg_kwargs)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(row["cfg"])
        row["hf_total"] = sum(p.numel() for p in model.parameters())
        del model
    per_rep = max(1, calls // reps)
    for _ in range(reps):
        for row, (_, path, preset, *_rest) in zip(rows, models):
            gc.collect()
            row["warm"] += time_load(path, preset, per_rep)
            row["nocache"] += time_load(path, preset, max(1, per_rep // 5), nocache=True)
            gc.collect()
            t0 = time.perf_counter_ns()
            with torch.device("meta"):
                model = transformers.AutoModelForCausalLM.from_config(row["cfg"])
            row["hf"].append(ms_since(t0))
            del model
    out = []
    for row in rows:
        warm, hf = statistics.median(row["warm"]), statistics.median(row["hf"])
        out.append({"model": row["model"], "spec": row["spec"], "preset": row["preset"],
                    "specc_warm_ms": warm, "specc_cold_ms": row["specc_cold_ms"],
                    "specc_nocache_ms": statistics.median(row["nocache"]), "hf_meta_ms": hf, "ratio": hf / warm,
                    "specc_total": row["specc_total"], "hf_total": row["hf_total"], "reference": row["reference"],
                    "counts_equal": row["specc_total"] == row["hf_total"], "warm_calls": len(row["warm"]),
                    "hf_calls": len(row["hf"])})
    return out


def bench_process(spec: Path, runs: int) -> dict:
    specc = Path(sys.executable).parent / "specc"
    compile_cmd = [str(specc), "compile", str(spec), "--json"]
    base_cmd = [sys.executable, "-c", "pass"]
    times: dict[str, list[float]] = {"specc": [], "python": []}
    total = None
    for i in range(runs + 1):  # run 0 is the warm-up (file cache), not reported
        for key, cmd in (("specc", compile_cmd), ("python", base_cmd)):
            t0 = time.perf_counter_ns()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            elapsed = ms_since(t0)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
            if key == "specc":
                total = json.loads(proc.stdout)["params"]["total"]
            if i:
                times[key].append(elapsed)
    shown = spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec
    return {"command": f"specc compile {shown} --json", "runs": runs, "total": total,
            "specc_ms": statistics.median(times["specc"]), "python_pass_ms": statistics.median(times["python"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout (table on stderr)")
    ap.add_argument("--specs", type=Path, default=ROOT / "specs", help="folder of the specs (default: specs/)")
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions (HF calls per model)")
    ap.add_argument("--calls", type=int, default=50, help="warm specc calls per model, over all repetitions")
    ap.add_argument("--runs", type=int, default=7, help="runs of each whole process")
    args = ap.parse_args(argv)
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    present, missing = [], []
    for label, name, *rest in MODELS:
        path = args.specs / name
        if path.is_file():
            present.append((label, path, *rest))
        else:
            missing.append((label, path, "does not exist"))
    rows = bench_in_process(present, args.reps, args.calls, missing) if present else []
    for label, path, why in missing:
        say(f"skipped {label}: {path}: {why}")

    spec, note = args.specs / "gpt4-moe.spec", None
    if not spec.is_file():
        note = f"{spec} does not exist; timed {args.specs / 'gpt2.spec'} instead"
        spec = args.specs / "gpt2.spec"
    try:
        proc = bench_process(spec, args.runs)
    except (RuntimeError, ValueError, KeyError) as e:
        proc, note = None, f"process timing failed: {e}"

    say(f"\n{'model':<14}{'specc ms':>10}{'cold ms':>10}{'nocache ms':>12}{'HF meta ms':>12}{'HF/specc':>10}"
        "  counts (specc / HF)")
    for r in rows:
        say(f"{r['model']:<14}{r['specc_warm_ms']:>10.3f}{r['specc_cold_ms']:>10.1f}{r['specc_nocache_ms']:>12.2f}"
            f"{r['hf_meta_ms']:>12.1f}{r['ratio']:>9.0f}x  {r['specc_total']:,} / {r['hf_total']:,} "
            f"{'equal' if r['counts_equal'] else 'DIFFER'}"
            + ("" if r["specc_total"] == r["reference"] else f" (reference {r['reference']:,})"))
    if rows:
        say(f"(medians of {rows[0]['warm_calls']} warm specc calls and {rows[0]['hf_calls']} HF calls per model, "
            f"alternated; torch {sys.modules['torch'].__version__}, "
            f"transformers {sys.modules['transformers'].__version__})")
    if proc:
        say(f"\nprocess: {proc['command']}: {proc['specc_ms']:.0f} ms median of {proc['runs']} "
            f"(python -c pass: {proc['python_pass_ms']:.0f} ms, "
            f"so specc adds {proc['specc_ms'] - proc['python_pass_ms']:.0f} ms)")
    if note:
        say(f"note: {note}")

    scope = f" ({len(rows)} of {len(MODELS)} models)" if missing else ""
    goals = {
        f"in process under {GOAL_IN_PROCESS_MS:g} ms for every spec{scope}":
            bool(rows) and all(r["specc_warm_ms"] < GOAL_IN_PROCESS_MS for r in rows),
        f"whole compile process under {GOAL_PROCESS_S:g} s":
            proc is not None and proc["specc_ms"] < GOAL_PROCESS_S * 1000,
        f"at least {GOAL_RATIO:g}x faster than meta-device instantiation{scope}":
            bool(rows) and all(r["ratio"] >= GOAL_RATIO for r in rows),
    }
    say("")
    for goal, ok in goals.items():
        say(f"{'PASS' if ok else 'FAIL'}  {goal}")
    if args.json:
        skipped = [{"model": m[0], "spec": str(m[1]), "why": m[2]} for m in missing]
        print(json.dumps({"models": rows, "skipped": skipped, "process": proc, "process_note": note,
                          "goals": goals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
