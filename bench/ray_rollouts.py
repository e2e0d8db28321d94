"""Rollouts and rewards in the trainer's process, on Ray workers, and on Ray asynchronously.

    PYTHONPATH=. python bench/ray_rollouts.py              # → bench/results/ray_rollouts_cpu.json
    PYTHONPATH=. python bench/ray_rollouts.py --steps 10 --part steps

Two parts, each comparing its alternatives in the same run.

**steps**: the quickstart's GRPO steps (the bundled model, 16 prompts × 8 completions of up to 48
tokens) for ``--steps`` steps, in five modes:
- in the trainer's process (``distributed.backend=none``), torch on both cores;
- on Ray (``rollout.workers=2 rewards.workers=1``), synchronous and with
  ``rollout.async_steps=1``: the two rollout workers take a core each, and so does training;
- on Ray with one rollout worker and the trainer on one torch thread, synchronous and
  asynchronous: generation and training each have a core of their own, the case asynchronous
  rollouts are for.
Per mode it records the first step's time (the workers' start included) and, over the later
steps, the mean step time, the time a step spent collecting its batch (``perf/generate_s``),
what the trainer waited for within it (``async/wait_generate_s``, ``async/wait_score_s``), the
rollout workers' generation speed and the mean staleness.

**sandbox**: the QwQ-style recipe's code task (``linear_function``, checked by running its tests
in the sandbox's jails; root needed). ``--programs`` completions are scored four ways, and the
bench checks that all give the same verdicts:
- in the trainer's process, one program at a time (the ``correct`` verifier's ``workers: 1``);
- in the trainer's process, two at a time (its default ``workers: 2``, threads);
- by 1 Ray reward worker, one program at a time;
- by 2 Ray reward workers, one program at a time each.
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

from reasonrl.config import RunConfig, load_config
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
RAY = ["distributed.backend=ray", "rewards.workers=1"]
# mode → (overrides, the trainer's torch threads)
MODES = {
    "in-process": ([], 2),
    "ray": (RAY + ["rollout.workers=2"], 2),
    "ray-async": (RAY + ["rollout.workers=2", "rollout.async_steps=1"], 2),
    "ray-1worker": (RAY + ["rollout.workers=1"], 1),
    "ray-1worker-async": (RAY + ["rollout.workers=1", "rollout.async_steps=1"], 1),
}


def bench_steps(steps: int) -> list[dict]:
    cases = []
    for mode, (overrides, threads) in MODES.items():
        torch.set_num_threads(threads)
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

        later = rows[1:]  # the first step also waits for the workers to start

        def mean(key: str, rows: list[dict] = later) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return statistics.mean(values) if values else None

        speeds = [v for r in later for k, v in r.items() if k.endswith("/tokens_per_s")]
        cases.append(
            {
                "mode": mode,
                "trainer_threads": threads,
                "steps": steps,
                "wall_s": wall,
                "first_step_s": rows[0]["perf/step_s"],
                "step_mean_s": mean("perf/step_s"),
                "collect_mean_s": mean("perf/generate_s"),
                "wait_generate_mean_s": mean("async/wait_generate_s"),
                "wait_score_mean_s": mean("async/wait_score_s"),
                "worker_tokens_per_s": statistics.mean(speeds) if speeds else None,
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
    def config(runs_at_once: int) -> RunConfig:
        rewards = f"rewards={{correct: {{options: {{workers: {runs_at_once}}}}}}}"
        return load_config("quickstart", ["distributed.backend=ray", rewards])

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

    cases, want = [], None
    for at_once in (1, 2):
        rewards = config(at_once).rewards
        score_batch(texts[:1], samples[:1], rewards)  # the verifiers built before the clock
        t0 = time.perf_counter()
        got = score_batch(texts, samples, rewards).total
        seconds = time.perf_counter() - t0
        want = want or got
        cases.append(
            {"mode": f"in-process, {at_once} at a time", "programs": programs, "s": seconds,
             "same_verdicts": got == want}
        )  # fmt: skip
    cfg = config(1)
    start_ray(None, 2)
    import ray

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
            {"mode": f"ray, rewards.workers={n}, 1 at a time each", "programs": programs,
             "s": seconds, "same_verdicts": got == want}
        )  # fmt: skip
        for actor in workers.actors:  # their CPUs, for the next case's workers
            ray.kill(actor)
    base = cases[0]["s"]
    for case in cases:
        case["speedup_over_in_process_1"] = base / case["s"]
        case["passed"] = sum(v == 1.0 for v in want)
        print(json.dumps(case))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["steps", "sandbox", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
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
