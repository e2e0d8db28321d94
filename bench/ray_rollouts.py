"""Rollouts and rewards in the trainer's process, on Ray workers, and on Ray asynchronously.

    PYTHONPATH=. python bench/ray_rollouts.py              # → bench/results/ray_rollouts_cpu.json
    PYTHONPATH=. python bench/ray_rollouts.py --steps 10 --part steps

Two parts, each comparing its alternatives in the same run.

**steps**: the quickstart's GRPO steps (the bundled model, 16 prompts × 8 completions of up to 48
tokens) for ``--steps`` steps, three ways:
- in the trainer's process (``distributed.backend=none``);
- on Ray (``rollout.workers=2 rewards.workers=1``);
- on Ray with ``rollout.async_steps=1``.
Per mode it records:
- the wall time of the train loop (Ray's start and the actors' included) and the sum of the
  steps' times (``perf/step_s``; without the start);
- the mean time a step spent collecting its batch (``perf/generate_s``);
- what the trainer waited for within that (``async/wait_generate_s``, ``async/wait_score_s``);
- the mean staleness.

**sandbox**: the QwQ-style recipe's code task (``linear_function``, checked by running its tests
in the sandbox's jails; root needed). ``--programs`` completions are scored three ways, and the
bench checks that the three give the same verdicts:
- in the trainer's process (``score_batch``);
- by 1 Ray reward worker;
- by 2 Ray reward workers.
The completions are: half the gold program, a quarter a wrong constant, a quarter a syntax
error. The Ray cases get the completions as 2 shares, as from 2 rollout workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from reasonrl.config import load_config
from reasonrl.logging import RunLogger, read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rewards import score_batch
from reasonrl.rollout import HFEngine, Rollout
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.tasks.linear import linear_function_samples, linear_function_solution
from reasonrl.train.context import RunContext
from reasonrl.train.rl import train_rl
from reasonrl.workers import RewardWorker, Workers, start_ray

RESULTS = Path(__file__).parent / "results"
MODES = {
    "in-process": [],
    "ray": ["distributed.backend=ray", "rollout.workers=2", "rewards.workers=1"],
    "ray-async": [
        "distributed.backend=ray",
        "rollout.workers=2",
        "rewards.workers=1",
        "rollout.async_steps=1",
    ],
}


def bench_steps(steps: int) -> list[dict]:
    cases = []
    for mode, overrides in MODES.items():
        cfg = load_config(
            "quickstart",
            [f"rl.steps={steps}", "log.report_to=none", "log.checkpoint_every=0"] + overrides,
        )
        tokenizer = load_tokenizer("bundled")
        model = load_model(cfg.model, torch.device("cpu"))
        train, _ = load_splits(cfg.task)
        prompts = [
            render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train
        ]
        with tempfile.TemporaryDirectory() as out, RunLogger(Path(out), report_to=[]) as logger:
            ctx = RunContext(cfg, Path(out), logger, console=Console(quiet=True))
            engine = HFEngine(model, tokenizer)
            t0 = time.perf_counter()
            train_rl(ctx, model, None, tokenizer, engine, prompts, train)
            wall = time.perf_counter() - t0
            rows = list(read_jsonl(Path(out) / "metrics.jsonl"))

        def mean(key: str, rows: list[dict] = rows) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return statistics.mean(values) if values else None

        cases.append(
            {
                "mode": mode,
                "steps": steps,
                "wall_s": wall,
                "steps_s": sum(r["perf/step_s"] for r in rows),
                "step_median_s": statistics.median(r["perf/step_s"] for r in rows),
                "collect_mean_s": mean("perf/generate_s"),
                "wait_generate_mean_s": mean("async/wait_generate_s"),
                "wait_score_mean_s": mean("async/wait_score_s"),
                "staleness_mean": mean("async/staleness"),
                "reward_mean_last": rows[-1]["reward/mean"],
            }
        )
        print(json.dumps(cases[-1]))
    return cases


def _rollout(texts: list[str], tokenizer: object) -> Rollout:
    """A Rollout holding ``texts`` as its completions (what a reward worker reads)."""
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    width = max(map(len, ids))
    completion = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        completion[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    ones = torch.ones(len(ids), 1, dtype=torch.long)
    return Rollout(ones, ones, completion, mask, torch.zeros(mask.shape), texts, ones[:, 0].bool())


def bench_sandbox(programs: int) -> list[dict]:
    cfg = load_config(
        "quickstart",
        ["distributed.backend=ray", "rewards={correct: 1.0}", "rollout.workers=2"],
    )
    tokenizer = load_tokenizer("bundled")
    samples = linear_function_samples(programs, seed=0, params={})
    texts = []
    for i, sample in enumerate(samples):
        gold = linear_function_solution(sample)
        if i % 4 == 2:  # a wrong constant
            gold = gold.replace("return ", "return 1 + ", 1)
        elif i % 4 == 3:  # a syntax error
            gold = gold.replace("def f(x):", "def f(x)", 1)
        texts.append(gold)
    half = len(texts) // 2
    shares = [(texts[:half], samples[:half]), (texts[half:], samples[half:])]

    score_batch(texts[:1], samples[:1], cfg.rewards)  # the verifiers built before the clock
    t0 = time.perf_counter()
    want = score_batch(texts, samples, cfg.rewards).total
    cases = [{"mode": "in-process", "programs": programs, "s": time.perf_counter() - t0}]
    start_ray(None, 3)
    for n in (1, 2):
        workers = Workers("reward", RewardWorker, (cfg,), n, cfg, print)
        for i in range(n):  # started, and the verifiers built, before the clock
            warm = (_rollout(texts[:1], tokenizer), 0.0)
            workers.get(workers.submit(i, "score", warm, samples[:1]))
        t0 = time.perf_counter()
        calls = [
            workers.submit(k % n, "score", (_rollout(t, tokenizer), 0.0), s)
            for k, (t, s) in enumerate(shares)
        ]
        got = [v for call in calls for v in workers.get(call)[0].total]
        seconds = time.perf_counter() - t0
        cases.append(
            {"mode": f"ray, rewards.workers={n}", "programs": programs, "s": seconds,
             "same_verdicts": got == want}
        )  # fmt: skip
    base = cases[0]["s"]
    for case in cases:
        case["speedup_over_in_process"] = base / case["s"]
        case["passed"] = sum(v == 1.0 for v in want)
        print(json.dumps(case))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["steps", "sandbox", "both"], default="both")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_rollouts_cpu.json")
    args = parser.parse_args()
    entry = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }
    if args.part in ("steps", "both"):
        entry["steps"] = bench_steps(args.steps)
    if args.part in ("sandbox", "both"):
        entry["sandbox"] = bench_sandbox(args.programs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entry, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
