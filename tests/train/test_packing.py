"""model.pack_tokens changes how training forwards are laid out, not what they compute: one
step of each trainer logs the same loss and gradient norm packed as padded."""

import pytest

from reasonrl.config import load_config
from reasonrl.logging import read_jsonl
from reasonrl.train.run import run

QUIET = [
    "eval.before=false",
    "eval.after=false",
    "log.tensorboard=false",
    "log.checkpoint_every=0",
]
SFT = [
    "model.init=null",
    "task.train_size=64",
    "task.eval_size=8",
    "sft.steps=1",
    "sft.examples_per_step=16",
    "sft.micro_batch_examples=8",
    "eval.every=0",
]
RL = [
    "task.train_size=64",
    "task.eval_size=8",
    "rl.steps=1",
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=8",
    "rollout.max_new_tokens=24",
    "algo.beta=0.05",  # so the reference's log-probs are packed too
]


@pytest.mark.parametrize(
    ("recipe", "overrides", "keys"),
    [
        ("tiny-cold-start", SFT, ["loss/sft", "optim/grad_norm"]),
        ("quickstart", RL, ["loss/policy", "optim/grad_norm", "kl/mean", "entropy/mean"]),
        ("quickstart-lora", RL, ["loss/policy", "optim/grad_norm", "kl/mean"]),
        ("quickstart", [*RL, "algo.name=ppo"], ["loss/policy", "loss/value", "optim/grad_norm"]),
    ],
    ids=["sft", "grpo", "grpo-lora", "ppo"],
)
def test_one_step_logs_the_same_packed_as_padded(tmp_path, recipe, overrides, keys):
    logged = []
    for pack in (0, 100):  # two or three sequences (of 30 to 60 tokens) per row
        cfg = load_config(recipe, overrides + QUIET + [f"model.pack_tokens={pack}"])
        run(cfg, tmp_path / str(pack))
        rows = read_jsonl(tmp_path / str(pack) / "metrics.jsonl")
        logged.append(next(m for m in rows if keys[0] in m))
    for key in keys:
        assert logged[1][key] == pytest.approx(logged[0][key], rel=1e-4, abs=1e-6), key
