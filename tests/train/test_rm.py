"""The reward-model stage on the bundled model with generated pairs (CPU, seconds)."""

import dataclasses
import json
import shutil

import pytest
import torch

from reasonrl.config import ConfigError, load_config
from reasonrl.logging import RunLogger, read_jsonl
from reasonrl.models import load_tokenizer
from reasonrl.models.reward import load_reward_model, pad_left
from reasonrl.tasks import Sample, render_prompt
from reasonrl.tasks.preferences import encode_pairs, generated_pairs
from reasonrl.train.checkpoint import latest_checkpoint
from reasonrl.train.context import RunContext
from reasonrl.train.rm import pair_scores, train_rm
from reasonrl.train.run import run

TINY = [
    "task.train_size=300",
    "task.eval_size=64",
    "rm.data.train_size=300",
    "rm.data.eval_size=64",
    "rm.pairs_per_step=16",
    "rm.micro_batch_pairs=16",
    "rm.warmup_steps=2",
    "log.checkpoint_every=0",
    "log.tensorboard=false",
]


def test_rm_stage_learns_and_writes_its_run_dir(tmp_path):
    plain = ["rm.likelihood=0", "rm.steps=16", "rm.eval_every=8", "rm.learning_rate=1e-3"]
    cfg = load_config("tiny-rm", TINY + plain)  # the head alone: it starts from nothing
    run_dir = tmp_path / "rm"
    summary = run(cfg, run_dir)  # the generic entry point dispatches on stage: rm

    evals = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "eval/pairwise_accuracy" in m]
    assert [m["step"] for m in evals] == [0, 8, 16]
    assert evals[0]["eval/pairwise_accuracy"] == 0.5  # a new value head scores everything 0
    assert evals[-1]["eval/pairwise_accuracy"] > 0.65, evals
    assert evals[-1]["eval/margin"] > 0
    steps = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "loss/rm" in m]
    assert len(steps) == 16 and all(0 <= m["rm/accuracy"] <= 1 for m in steps)

    assert summary == json.loads((run_dir / "summary.json").read_text())
    assert summary["stage"] == "rm" and summary["steps"] == 16
    assert summary["eval"]["n"] == 64 and summary["eval"]["truncated"] == 0
    by_kind = summary["eval"]["by_kind"]  # generated pairs know how the rejected one is worse
    assert set(by_kind) <= {"estimate", "slip", "mismatch", "malformed"} and len(by_kind) >= 3
    assert sum(row["n"] for row in by_kind.values()) == 64
    # the overall accuracy is the kinds' accuracies weighted by their counts
    weighted = sum(row["pairwise_accuracy"] * row["n"] for row in by_kind.values()) / 64
    assert weighted == pytest.approx(summary["eval"]["pairwise_accuracy"], abs=1e-6)
    assert all(f"eval/pairwise_accuracy/{kind}" in evals[-1] for kind in by_kind)
    assert summary["eval"]["pairwise_accuracy"] == pytest.approx(
        evals[-1]["eval/pairwise_accuracy"]
    )
    rm = load_reward_model(summary["model_dir"], device="cpu")  # head found in the saved dir
    assert rm.head == "value"
    assert (run_dir / "plots" / "pairwise.png").is_file() and (run_dir / "report.html").is_file()


def test_a_likelihood_rm_starts_from_what_the_model_finds_likely(tmp_path):
    cfg = load_config("tiny-rm", TINY + ["rm.steps=4", "rm.eval_every=0", "rm.likelihood=10"])
    summary = run(cfg, tmp_path / "rm")
    evals = [
        m for m in read_jsonl(tmp_path / "rm" / "metrics.jsonl") if "eval/pairwise_accuracy" in m
    ]
    # The head starts at zero, so step 0 is the bundled model's likelihood alone: it prefers
    # the careful correct chain on most pairs (all but the likely hasty estimates and slips).
    assert evals[0]["step"] == 0 and evals[0]["eval/pairwise_accuracy"] > 0.65, evals
    rm = load_reward_model(summary["model_dir"], device="cpu")
    assert rm.likelihood == 10.0 and rm.model.lm_head is not None


def _pairs(tok, n, seed):
    samples = [
        Sample(f"{a} + {b} - {c} =", str(a + b - c), {"expression": f"{a} + {b} - {c}"})
        for a, b, c in [(7, 45, 3), (23, 8, 61), (58, 12, 9), (4, 99, 30)] * n
    ]
    pairs, _ = encode_pairs(
        generated_pairs(samples, lambda s: render_prompt(s, tok), seed), tok, 128
    )
    return pairs


def _train(tmp_path, overrides, resume_from=None, on_step=None):
    cfg = load_config("tiny-rm", overrides + ["log.tensorboard=false", "rm.eval_every=0"])
    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    rm = load_reward_model(str(resume_from or "bundled"), "value", device="cpu")
    step = int(resume_from.name.split("-")[1]) if resume_from else None
    with RunLogger(tmp_path, report_to=(), resume_step=step) as logger:
        ctx = RunContext(cfg, tmp_path, logger, resume_from=resume_from, on_step=on_step)
        train_rm(ctx, rm, tok, _pairs(tok, 4, 0), _pairs(tok, 1, 1))
    return rm


def test_accumulation_does_not_change_the_update(tmp_path):
    base = ["rm.steps=1", "rm.pairs_per_step=8", "rm.warmup_steps=0"]
    whole = _train(tmp_path / "a", base + ["rm.micro_batch_pairs=8"])
    split = _train(tmp_path / "b", base + ["rm.micro_batch_pairs=2"])
    start = load_reward_model("bundled", "value", device="cpu")
    moved = [
        not torch.equal(a, b) for a, b in zip(whole.parameters(), start.parameters(), strict=True)
    ]
    assert any(moved)
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_interrupt_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = ["rm.steps=4", "rm.pairs_per_step=4", "rm.micro_batch_pairs=2", "rm.warmup_steps=1"]
    whole = _train(tmp_path / "whole", cfg)

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", cfg, on_step=stop)
    checkpoint = latest_checkpoint(tmp_path / "cut")
    assert checkpoint.name == "step-2"
    resumed = _train(tmp_path / "cut", cfg, resume_from=checkpoint)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == strip(
        read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    )


def test_pair_scores_share_the_prompt_or_fall_back_when_none_is_left():
    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    rm = load_reward_model("bundled", "value", device="cpu")
    torch.nn.init.normal_(rm.model.head.weight, std=0.1)
    pairs = _pairs(tok, 1, 0)
    for batch in (pairs, [dataclasses.replace(p, prompt=[]) for p in pairs]):
        chosen, rejected = pair_scores(rm, batch, tok.pad_token_id)
        prompts = [p.prompt for p in batch]
        responses = [p.chosen for p in batch] + [p.rejected for p in batch]
        oracle = rm(*pad_left(prompts + prompts, responses, tok.pad_token_id))
        torch.testing.assert_close(torch.cat([chosen, rejected]), oracle, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.gradient_checkpointing=true", "gradient_checkpointing"),
        (
            "model.lora={r: 4};rm.head=classification;rm.likelihood=0",
            "lora in the rm stage needs rm.head=value",
        ),
    ],
)
def test_unsupported_model_options_fail_before_anything_runs(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(load_config("tiny-rm", override.split(";")), tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


def test_lora_rm_trains_adapters_and_the_head_then_saves_a_plain_merged_model(tmp_path):
    over = TINY + ["rm.steps=6", "rm.learning_rate=2e-3", "model.lora={r: 4, alpha: 8}"]
    run_dir = tmp_path / "rm"
    summary = run(load_config("tiny-rm", over + ["log.checkpoint_every=3"]), run_dir)
    checkpoint = latest_checkpoint(run_dir)  # the adapter and the head, not the whole model
    assert (checkpoint / "adapter_config.json").is_file() and (
        checkpoint / "value_head.pt"
    ).is_file()
    assert not (checkpoint / "model.safetensors").exists()
    rm = load_reward_model(summary["model_dir"], device="cpu")  # merged: a plain reward model
    start = load_reward_model("bundled", "value", device="cpu")
    moved = [
        not torch.equal(a, b) for a, b in zip(rm.parameters(), start.parameters(), strict=True)
    ]
    assert any(moved) and not all(moved)  # embeddings and norms are not adapted
    assert summary["eval"]["pairwise_accuracy"] > 0.5

    # resume from step 3 reproduces the uninterrupted run's metrics
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints" / "step-3", cut / "checkpoints" / "step-3")
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] <= 3]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resumed = run(load_config("tiny-rm", over), cut, resume=True)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(cut / "metrics.jsonl")) == strip(read_jsonl(run_dir / "metrics.jsonl"))
    assert resumed["eval"] == summary["eval"]
