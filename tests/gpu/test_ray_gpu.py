"""Ray workers beside a trainer on CUDA (tests/train/test_rl_ray.py on the CPU): GRPO in float64
writes the in-process run's metrics with the rollout workers on the trainer's GPU
(``distributed.worker_gpus=0.5``, two on one GPU, weights through the object store) and with
the workers on the CPU, sent the weights by a gloo broadcast from the GPU. Skipped without CUDA,
and without Ray (the GPU image lacks it; its wheel is larger than a device call carries)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from reasonrl.config import load_config
from reasonrl.logging import RunLogger, read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.train.context import RunContext
from reasonrl.train.rl import train_rl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
COMMON = [
    "model.dtype=float64",
    "model.device=cuda",
    "task.train_size=64",
    "rl.steps=3",
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=8",
    "rl.learning_rate=1e-3",
    "rl.warmup_steps=0",
    "rollout.max_new_tokens=12",
    "rewards={answer: 1.0, length: {options: {max_length: 60, unit: chars}}}",
    "log.report_to=none",
    "log.checkpoint_every=0",
]
RAY = ["distributed.backend=ray", "rollout.workers=2", "rewards.workers=1"]


def run(out: Path, overrides: list[str]) -> list[dict]:
    cfg = load_config("quickstart", COMMON + overrides)
    tokenizer = load_tokenizer("bundled")
    model = load_model(cfg.model, torch.device("cuda"))
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train]
    with RunLogger(out, report_to=[]) as logger:
        ctx = RunContext(cfg, out, logger, console=Console(quiet=True))
        train_rl(ctx, model, None, tokenizer, HFEngine(model, tokenizer), prompts, train)
    return list(read_jsonl(out / "metrics.jsonl"))


@pytest.mark.parametrize(
    "workers",
    [
        ["distributed.worker_gpus=0.5"],
        ["distributed.weight_sync=collective"],  # gloo: the workers are on the CPU
    ],
)
def test_ray_workers_beside_a_cuda_trainer_write_its_metrics(
    tmp_path: Path, workers: list[str]
) -> None:
    ray = pytest.importorskip("ray")
    want = run(tmp_path / "in-process", [])
    try:
        got = run(tmp_path / "ray", [*RAY, *workers])
    finally:
        ray.shutdown()
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            if not k.startswith(("perf/", "async/", "workers/")) and v is not None:
                assert g[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (w["step"], k)
    assert all(row["workers/rollout-1/tokens_per_s"] > 0 for row in got)
