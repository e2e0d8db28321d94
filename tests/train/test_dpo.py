"""The DPO trainer on the bundled model: it learns the preference, its loss does not depend on
the micro-batch split, it resumes exactly, and ``reasonrl run`` drives it end to end."""

import json
import math
import shutil

import pytest
import torch

from reasonrl.config import ModelConfig, load_config
from reasonrl.logging import RunLogger, read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.lora import apply_lora
from reasonrl.tasks.preferences import PreferencePair, encode_pairs
from reasonrl.train.context import RunContext
from reasonrl.train.dpo import train_dpo
from reasonrl.train.run import run


def _pairs(tok, numbers):
    """Careful correct trace (chosen) against a bare wrong answer (rejected)."""
    pairs = [
        PreferencePair(
            tok.apply_chat_template(
                [{"role": "user", "content": f"What is {a} + {b}?"}],
                tokenize=False,
                add_generation_prompt=True,
            ),
            f"<think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>",
            f"<answer>{a + b + 3}</answer>",
        )
        for a, b in numbers
    ]
    encoded, truncated = encode_pairs(pairs, tok, 256)
    assert truncated == 0
    return encoded


def _setup(tmp_path, overrides, lora=False):
    cfg = load_config(
        "tiny-dpo",
        [
            "dpo.steps=6",
            "dpo.pairs_per_step=8",
            "dpo.micro_batch_pairs=4",
            "dpo.learning_rate=1e-3",
            "dpo.warmup_steps=0",
            "dpo.eval_every=3",
            "log.checkpoint_every=0",
            "log.tensorboard=false",
        ]
        + overrides,
    )
    tok = load_tokenizer("bundled")
    model = load_model(ModelConfig(path="bundled", device="cpu"))
    if lora:
        model = apply_lora(model, load_config(None, ["model.lora={r: 8, alpha: 16}"]).model.lora)
    train = _pairs(tok, [(a, b) for a in range(10, 16) for b in range(20, 24)])
    held_out = _pairs(tok, [(a, b) for a in range(30, 34) for b in range(5, 7)])
    return cfg, model, tok, train, held_out


@pytest.mark.parametrize(
    ("loss_type", "lora"), [("sigmoid", False), ("ipo", False), ("sigmoid", True)]
)
def test_dpo_raises_the_held_out_margin(tmp_path, loss_type, lora):
    cfg, model, tok, train, held_out = _setup(tmp_path, [f"dpo.loss_type={loss_type}"], lora)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with RunLogger(tmp_path, report_to=()) as logger:
        assert train_dpo(RunContext(cfg, tmp_path, logger), model, tok, train, held_out) == 6
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    evals = [m for m in metrics if "eval/dpo_margin" in m]
    steps = [m for m in metrics if "loss/dpo" in m]
    assert [m["step"] for m in evals] == [0, 3, 6] and len(steps) == 6
    assert evals[0]["eval/dpo_margin"] == pytest.approx(0.0, abs=1e-4)  # policy = reference
    if loss_type == "sigmoid":
        assert steps[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-4)
    assert evals[-1]["eval/dpo_margin"] > 1.0, evals
    assert evals[-1]["eval/dpo_reward_accuracy"] >= 0.75  # 0 at the start (all ties)
    assert evals[-1]["eval/dpo_loss"] < evals[0]["eval/dpo_loss"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    if lora:
        assert changed and all("lora_" in n for n in changed)
    else:
        assert changed == set(start)


def test_loss_and_gradient_do_not_depend_on_the_micro_batch_split(tmp_path):
    logged = []
    for micro in (8, 2):
        out = tmp_path / str(micro)
        cfg, model, tok, train, held_out = _setup(
            tmp_path, ["dpo.steps=1", f"dpo.micro_batch_pairs={micro}"]
        )
        with RunLogger(out, report_to=()) as logger:
            train_dpo(RunContext(cfg, out, logger), model, tok, train, held_out)
        logged.append(next(m for m in read_jsonl(out / "metrics.jsonl") if "loss/dpo" in m))
    for key in ("loss/dpo", "optim/grad_norm", "dpo/margin"):
        assert logged[0][key] == pytest.approx(logged[1][key], rel=1e-5, abs=1e-6), key


def test_resume_uses_the_stored_reference_and_reproduces_the_run(tmp_path):
    cfg, model, tok, train, held_out = _setup(tmp_path, ["log.checkpoint_every=3"])
    full = tmp_path / "full"
    with RunLogger(full, report_to=()) as logger:
        train_dpo(RunContext(cfg, full, logger), model, tok, train, held_out)

    part = tmp_path / "part"
    shutil.copytree(full, part)
    ckpt = part / "checkpoints" / "step-3"
    shutil.rmtree(part / "checkpoints" / "step-6")
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["extra"]["ref_train"].shape == (len(train), 2)
    resumed = load_model(ModelConfig(path=str(ckpt), device="cpu"))
    with RunLogger(part, report_to=(), resume_step=3) as logger:
        ctx = RunContext(cfg, part, logger, resume_from=ckpt)
        assert train_dpo(ctx, resumed, tok, train, held_out) == 6
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [m["step"] for m in b] == [m["step"] for m in a]
    for x, y in zip(a, b, strict=True):
        for key in set(x) - {"perf/step_s", "perf/tokens_per_s"}:
            assert y[key] == pytest.approx(x[key], abs=1e-6), (x["step"], key)


def test_dpo_stage_runs_end_to_end(tmp_path):
    cfg = load_config(
        "tiny-dpo",
        [
            "task.train_size=200",
            "task.eval_size=16",
            "dpo.data={source: generated, train_size: 64, eval_size: 32}",
            "dpo.steps=4",
            "dpo.pairs_per_step=8",
            "dpo.micro_batch_pairs=8",
            "dpo.learning_rate=5e-4",
            "dpo.warmup_steps=0",
            "dpo.eval_every=2",
            "eval.k=2",
            "log.tensorboard=false",
        ],
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["stage"] == "dpo" and summary["steps"] == 4
    assert summary["before"]["n"] == summary["after"]["n"] == 16
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evals = [m for m in metrics if "eval/dpo_margin" in m]
    assert [m["step"] for m in evals] == [0, 2, 4]
    assert evals[-1]["eval/dpo_margin"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["after"] is not None
    assert (tmp_path / "run" / "report.html").exists()
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
