"""The RL trainer on each rank (``torchrun --nproc-per-node 2 rl_worker.py OUT CASE...``), or in
one process (``python rl_worker.py OUT CASE...``), for ``test_rl_ranks.py`` to compare.

A case is ``NAME:PARALLEL`` (NAME a key of ``CASES``, PARALLEL ddp or fsdp; one process ignores
it): the bundled model in float64, ``train_rl`` for 3 steps on a few prompts. Rank 0 writes
``OUT/NAME-PARALLEL-wW.pt``: the trained parameters, the critic's, metrics.jsonl and
samples.jsonl; PPO's critic is also saved as a checkpoint (``OUT/NAME-PARALLEL-wW-critic/``).
"""

from __future__ import annotations

import copy
import datetime
import sys
from pathlib import Path

import torch

from reasonrl.config import load_config
from reasonrl.distributed import (
    barrier,
    full_model_state,
    init_distributed,
    shutdown,
    wrap_model,
)
from reasonrl.logging import RunLogger, SilentLogger, read_jsonl
from reasonrl.models import load_model, load_tokenizer, resolve_model_path
from reasonrl.models.value import ValueModel
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.train.context import RunContext
from reasonrl.train.critic import Critic
from reasonrl.train.rl import train_rl

COMMON = [
    "model.dtype=float64",
    "model.device=cpu",
    "task.train_size=64",
    "task.eval_size=4",
    "rl.steps=3",
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=4",  # two micro-batches per rank: gradient_sync is exercised
    "rl.learning_rate=1e-3",
    "rl.warmup_steps=0",
    "rollout.max_new_tokens=12",
    # too short to answer: a reward on the length in characters makes the groups differ
    "rewards={answer: 1.0, length: {options: {max_length: 60, unit: chars}}}",
    "log.report_to=none",
    "log.checkpoint_every=0",
    "log.samples_every=1",
    "log.samples_per_log=4",
]

CASES = {
    "token_mean": ["algo.aggregation=token_mean"],
    "seq_mean_token_mean": ["algo.aggregation=seq_mean_token_mean"],
    "seq_mean_token_sum_norm": ["algo.aggregation=seq_mean_token_sum_norm"],
    # four mini-batches, two epochs (seeded shuffles), batch-wide std and whitening
    "mini": [
        "rl.mini_batch_completions=4",
        "algo.ppo_epochs=2",
        "algo.scale_rewards=batch",
        "algo.whiten=true",
    ],
    "ppo": ["algo.name=ppo", "rl.mini_batch_completions=8", "algo.ppo_epochs=2"],
    # dynamic sampling: some steps drop groups and draw a second round, and the kept groups
    # sit unevenly on the ranks until they are dealt (train/collect.py)
    "dapo": ["algo.name=dapo", "rl.mini_batch_completions=8", "algo.overlong_filter=false"],
    # packed forwards (policy, old, reference, critic): the ranks pack different numbers of
    # rows, and the one with fewer runs filler rows (PackedBatch.even)
    "pack_ppo": [
        "algo.name=ppo",
        "model.pack_tokens=118",
        "algo.beta=0.05",
        "algo.ppo_epochs=2",
    ],
}


def run_case(name: str, parallel: str, out: Path) -> None:
    ranks = init_distributed("cpu", timeout=datetime.timedelta(seconds=120))
    cfg = load_config("quickstart", COMMON + CASES[name])
    device = torch.device("cpu")
    tokenizer = load_tokenizer("bundled")
    model = load_model(cfg.model, device)
    ref = None
    if cfg.algo.beta > 0:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    engine = HFEngine(model, tokenizer)  # the unwrapped module: FSDP2 shards it in place
    policy = wrap_model(model, parallel, ranks, device)
    critic = None
    if cfg.algo.name == "ppo":
        value = ValueModel.from_pretrained(resolve_model_path("bundled"), torch.float64)
        critic = wrap_model(value, parallel, ranks, device)
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train]
    tag = f"{name}-{parallel}-w{ranks.world_size}"
    run_dir = out / tag
    logger = RunLogger(run_dir, report_to=[]) if ranks.is_main else SilentLogger()
    ctx = RunContext(cfg, run_dir, logger, ranks=ranks)
    train_rl(ctx, policy, ref, tokenizer, engine, prompts, train, critic)
    result = {"policy": full_model_state(policy, ranks)}
    if critic is not None:
        result["critic"] = full_model_state(critic, ranks)
        Critic(critic, cfg, ranks).save(out / f"{tag}-critic")
    if ranks.is_main:
        logger.close()
        result["metrics"] = list(read_jsonl(run_dir / "metrics.jsonl"))
        result["samples"] = list(read_jsonl(run_dir / "samples.jsonl"))
        torch.save(result, out / f"{tag}.pt")
    barrier(ranks)


def main(out: Path, cases: list[str]) -> None:
    for case in cases:
        name, parallel = case.split(":")
        run_case(name, parallel, out)
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
