"""Seeded sampling (per-completion seeds) against global-RNG sampling, in the same run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/seeded_sampling.py   # → seeded_sampling_cpu.json
    PYTHONPATH=. python bench/seeded_sampling.py --device cuda --rows 256

Two parts. **Engines**: the ``fast`` and ``hf`` engines on the bundled checkpoint generate
``--prompts`` × ``--group`` completions of up to ``--new-tokens`` tokens, with ``seeds=`` and
without, the two modes interleaved in each of ``--repeats`` rounds after a warm-up; the median
time gives completion tokens/s (tokens up to EOS) and row-tokens/s (rows × completion width:
the decode work, which does not depend on where EOS happened to fall). **Draw alone**:
``sample_tokens`` on ``--rows`` rows of random logits at the bundled vocab (348) and at
Qwen2.5's (151,936), plain and with top-k 50 / top-p 0.9 — the per-decode-step cost that grows
with the vocab, which the tiny checkpoint hides. Leaves out: CUDA graphs' effect (run with
``--device cuda`` for it), bigger models.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reasonrl.config import ModelConfig
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rollout import FastEngine, HFEngine
from reasonrl.rollout.sampling import sample_tokens
from reasonrl.tasks import Sample, render_prompt

RESULTS = Path(__file__).parent / "results"
VOCABS = (348, 151_936)
DRAWS = {"plain": {}, "top_k=50": {"top_k": 50}, "top_p=0.9": {"top_p": 0.9}}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(device)
    return time.perf_counter() - t0, out


def bench_engines(args: argparse.Namespace) -> list[dict]:
    tok = load_tokenizer("bundled")
    model = load_model(ModelConfig(path="bundled", device=args.device))
    q = "State the final answer to the following arithmetic problem: "
    prompts = [
        render_prompt(Sample(f"{q}{i} + {3 * i % 17} - {i % 5} =", "0"), tok)
        for i in range(args.prompts)
    ]
    rows = [p for p in prompts for _ in range(args.group)]
    sampling = {"max_new_tokens": args.new_tokens, "temperature": args.temperature}
    cases = []
    for name, engine_type in (("fast", FastEngine), ("hf", HFEngine)):
        engine = engine_type(model, tok)
        times: dict[str, list[float]] = {"global": [], "seeded": []}
        work: dict[str, list[tuple[int, int]]] = {"global": [], "seeded": []}
        for r in range(args.repeats + 1):  # round 0 is a warm-up
            for mode in times:
                torch.manual_seed(r)
                seeds = [r * len(rows) + i for i in range(len(rows))] if mode == "seeded" else None
                seconds, ro = _timed(args.device, engine.generate, rows, seeds=seeds, **sampling)
                if r:
                    times[mode].append(seconds)
                    work[mode].append((int(ro.lengths.sum()), ro.completion_ids.numel()))
        for mode in times:
            median = statistics.median(times[mode])
            tokens = statistics.mean(w[0] for w in work[mode])
            cells = statistics.mean(w[1] for w in work[mode])
            cases.append(
                {
                    "engine": name,
                    "mode": mode,
                    "generate_s": median,
                    "completion_tokens": tokens,
                    "tokens_per_s": tokens / median,
                    "row_tokens_per_s": cells / median,
                }
            )
            print(json.dumps(cases[-1]))
        seeded, plain = cases[-1], cases[-2]
        seeded["overhead_row_tokens"] = plain["row_tokens_per_s"] / seeded["row_tokens_per_s"] - 1
    return cases


def bench_draws(args: argparse.Namespace) -> list[dict]:
    cases = []
    for vocab in VOCABS:
        logits = torch.randn(args.rows, vocab, device=args.device) * 3
        seeds = torch.arange(args.rows, device=args.device)
        for name, kw in DRAWS.items():
            times: dict[str, list[float]] = {"global": [], "seeded": []}
            for r in range(args.draw_repeats + 1):
                for mode in times:
                    s = seeds if mode == "seeded" else None
                    seconds, _ = _timed(
                        args.device, sample_tokens, logits, 0.8, seeds=s, position=r, **kw
                    )
                    if r:
                        times[mode].append(seconds)
            plain, seeded = (statistics.median(times[m]) for m in ("global", "seeded"))
            cases.append(
                {
                    "vocab": vocab,
                    "rows": args.rows,
                    "draw": name,
                    "global_ms": plain * 1e3,
                    "seeded_ms": seeded * 1e3,
                    "seeded_over_global": seeded / plain,
                }
            )
            print(json.dumps(cases[-1]))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=64, help="rows of the draw-alone part")
    parser.add_argument("--draw-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    entry = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "engines": bench_engines(args),
        "draws": bench_draws(args),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    tag = "cuda" if args.device == "cuda" else "cpu"
    path = args.out or RESULTS / f"seeded_sampling_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["config"] != entry["config"]] + [entry]
    path.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
