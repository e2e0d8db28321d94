"""The loop skeleton every stage shares (TrainLoop) and the checks a RunContext makes."""

import math

import pytest
import torch

from reasonrl.config import load_config
from reasonrl.logging import RunLogger, read_jsonl
from reasonrl.train.context import RunContext, StepOutput


def test_the_loop_logs_every_n_steps_evaluates_and_calls_the_hook(tmp_path):
    overrides = ["sft.steps=5", "sft.warmup_steps=0", "sft.min_lr_ratio=0", "log.every=2"]
    cfg = load_config("tiny-cold-start", [*overrides, "log.checkpoint_every=0"])
    model = torch.nn.Linear(2, 1)
    hooked: list[int] = []

    def train_step(step: int) -> StepOutput:
        loss = model(torch.ones(1, 2)).sum()  # d loss / d (w1, w2, b) = (1, 1, 1)
        loss.backward()
        return StepOutput({"loss/test": loss.item()}, {"loss": loss.item()}, {"things": 4})

    with RunLogger(tmp_path, report_to=()) as logger:
        ctx = RunContext(cfg, tmp_path, logger, on_step=hooked.append)
        loop = ctx.loop(model, None, cfg.sft, "test")
        assert loop.run(train_step, lambda: {"eval/x": 1.0}, eval_every=3) == 5
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r for r in rows if "loss/test" in r]
    assert [r["step"] for r in steps] == [2, 4, 5]  # every log.every steps and the last
    assert [r["step"] for r in rows if "eval/x" in r] == [0, 3, 5]
    assert hooked == [1, 2, 3, 4, 5]
    # the learning rate used by step 2 (index 1): cosine from 1e-3 to 0 over 5 steps
    lr = cfg.sft.learning_rate * 0.5 * (1 + math.cos(math.pi / 5))
    assert steps[0]["optim/lr"] == pytest.approx(lr)
    assert steps[0]["optim/grad_norm"] == pytest.approx(math.sqrt(3))  # before clipping at 1
    assert steps[0]["perf/things_per_s"] > 0 and "lr" not in steps[0]


def test_each_rank_shares_a_step_in_contiguous_blocks(tmp_path):
    from reasonrl.config import ConfigError
    from reasonrl.distributed import Ranks

    cfg = load_config(None, ["stage=sft"])
    with RunLogger(tmp_path, report_to=[]) as logger:
        step = [7, 3, 5, 1, 0, 2]
        blocks = [
            RunContext(cfg, tmp_path, logger, ranks=Ranks(r, 2)).share(step, "sft.x")
            for r in range(2)
        ]
        assert blocks == [[7, 3, 5], [1, 0, 2]]
        assert RunContext(cfg, tmp_path, logger).share(step, "sft.x") == step
        with pytest.raises(ConfigError, match=r"sft.examples_per_step=6 .* processes \(4\)"):
            four = RunContext(cfg, tmp_path, logger, ranks=Ranks(0, 4))
            four.share(step, "sft.examples_per_step")
