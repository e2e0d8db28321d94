"""LoRA: adapters alone train, the adapter-disabled model is the reference, saves reload."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import FileSystemReader

from reasonrl.algos import sft_loss
from reasonrl.config import ConfigError, LoRAConfig, ModelConfig, load_config
from reasonrl.logging import read_jsonl
from reasonrl.models import bundled_model_dir, load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.models.lora import (
    apply_lora,
    enable_activation_checkpointing,
    is_lora,
    load_base,
    reference_model,
    save_model,
)
from reasonrl.train.checkpoint import DCP_DIR
from reasonrl.train.optim import build_optimizer
from reasonrl.train.run import run

LORA = LoRAConfig(r=4, alpha=8)
IDS = torch.tensor([[5, 9, 30, 31, 7, 8, 12, 40], [0, 0, 6, 33, 34, 9, 10, 11]])
ATTN = (IDS != 0).long()


def _logp(model):
    with torch.no_grad():
        return completion_logprobs(model, IDS, ATTN, 4)[0]


def _bundled():
    return load_model(ModelConfig(path="bundled", device="cpu"))


def _train(policy, steps=3, lr=1e-2):
    """A few updates that raise the log-probs of IDS's last tokens."""
    optimizer = build_optimizer(policy.parameters(), lr, 0.0)
    policy.train()
    for _ in range(steps):
        logp, _ = completion_logprobs(policy, IDS, ATTN, 4)
        sft_loss(logp, torch.ones_like(logp), logp.numel()).backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()


def test_only_adapter_parameters_train():
    policy = apply_lora(_bundled(), LORA)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    assert sum(p.numel() for n, p in policy.named_parameters() if n in trainable) < frozen / 10
    # all-linear: every attention and MLP projection of every layer, not the tied lm_head
    layers = policy.config.num_hidden_layers
    assert sum(n.endswith("lora_A.default.weight") for n in trainable) == 7 * layers


def test_reference_is_the_base_before_and_after_updates():
    base = _bundled().eval()
    policy = apply_lora(copy.deepcopy(base), LORA).eval()
    start = _logp(base)
    torch.testing.assert_close(_logp(policy), start)  # new adapters (B = 0) change nothing
    _train(policy)
    moved = _logp(policy)
    assert (moved - start).abs().max() > 0.05
    with reference_model(policy) as ref:
        assert ref is policy
        torch.testing.assert_close(_logp(ref), start, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logp(policy), moved)  # adapters back on after the block
    with reference_model(base, ref_model=policy) as ref:
        assert ref is policy  # an explicit reference wins
    with reference_model(base) as ref:
        assert ref is None  # full fine-tuning without a reference copy: none


def test_merged_and_adapter_saves_reload_to_the_adapted_model(tmp_path):
    tok = load_tokenizer("bundled")
    policy = apply_lora(_bundled(), LORA)
    _train(policy)
    adapted = _logp(policy)

    save_model(policy, tok, tmp_path / "merged", LORA)
    assert is_lora(policy)  # merging worked on a copy: training can go on
    torch.testing.assert_close(_logp(policy), adapted)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = load_model(ModelConfig(path=str(tmp_path / "merged"), device="cpu"))
    torch.testing.assert_close(_logp(merged), adapted, rtol=1e-5, atol=1e-5)

    save_model(policy, tok, tmp_path / "adapter", LORA.model_copy(update={"save": "adapter"}))
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    cfg = ModelConfig(path=str(tmp_path / "adapter"), device="cpu")
    torch.testing.assert_close(_logp(load_base(cfg)), adapted, rtol=1e-5, atol=1e-5)
    # transformers' own peft integration reads the same directory (reasonrl eval --model)
    torch.testing.assert_close(_logp(load_model(cfg)), adapted, rtol=1e-5, atol=1e-5)
    assert load_tokenizer(str(tmp_path / "adapter")).chat_template == tok.chat_template

    # A second stage's adapter on top of the first one's names it as its base.
    stage2 = apply_lora(load_base(cfg), LORA)
    _train(stage2, steps=2)
    save_model(stage2, tok, tmp_path / "adapter2", LORA.model_copy(update={"save": "adapter"}))
    config = json.loads((tmp_path / "adapter2" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "adapter")
    reloaded = load_base(ModelConfig(path=str(tmp_path / "adapter2"), device="cpu"))
    torch.testing.assert_close(_logp(reloaded), _logp(stage2), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = _bundled()
        if checkpointing:
            enable_activation_checkpointing(model)
        assert model.model.layers[0].gradient_checkpointing is checkpointing
        torch.manual_seed(0)  # the same random A in both
        policy = apply_lora(model, LORA)
        with torch.no_grad():  # B ≠ 0 so that A gets a gradient too
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
        policy.train()
        logp, _ = completion_logprobs(policy, IDS, ATTN, 4)
        logp.sum().backward()
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.requires_grad})
    assert grads[1].keys() == grads[0].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


TINY_RL = [
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=8",
    "rl.micro_batch_completions=16",
    "rl.learning_rate=1e-3",
    "rl.warmup_steps=0",
    "rl.steps=3",
    "rollout.max_new_tokens=24",
    "task.train_size=200",
    "task.eval_size=16",
    "eval.before=false",
    "eval.after=false",
    "log.checkpoint_every=2",
    "log.tensorboard=false",
    "model.lora={r: 8, alpha: 16, save: adapter}",
    "model.gradient_checkpointing=true",
]


def test_lora_rl_run_uses_the_disabled_adapters_as_reference_and_resumes(tmp_path):
    cfg = load_config("quickstart", TINY_RL)
    full = tmp_path / "full"
    run(cfg, full)
    metrics = [m for m in read_jsonl(full / "metrics.jsonl") if "kl/mean" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["kl/mean"] < 1e-4 < metrics[-1]["kl/mean"]  # a reference, and it's fixed
    ckpt = full / "checkpoints" / "step-2"
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt"} <= {
        p.name for p in ckpt.iterdir()
    }
    assert not (ckpt / "model.safetensors").exists()
    adapters = apply_lora(_bundled(), cfg.model.lora).named_parameters()
    lora_params = sum(p.numel() for n, p in adapters if "lora_" in n)
    # the optimizer's state is in the DCP directory, keyed optim.state.<parameter>.<name>
    saved = FileSystemReader(str(ckpt / DCP_DIR)).read_metadata().state_dict_metadata
    exp_avg = sum(
        m.size.numel() for k, m in saved.items() if k.startswith("optim.") and k.endswith("exp_avg")
    )
    assert exp_avg == lora_params  # the optimizer holds the adapters' state alone

    # Resume from step 2 of a copy (its last checkpoint): step 3 comes out as in the
    # uninterrupted run.
    part = tmp_path / "part"
    shutil.copytree(full, part)
    assert [p.name for p in (part / "checkpoints").iterdir()] == ["step-2"]
    shutil.rmtree(part / "model")
    run(cfg, part, resume=True)
    resumed = [m for m in read_jsonl(part / "metrics.jsonl") if "kl/mean" in m]
    assert [m["step"] for m in resumed] == [1, 2, 3]
    for a, b in zip(metrics, resumed, strict=True):
        for key in ("loss/policy", "reward/mean", "kl/mean", "optim/grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-6, (a["step"], key, a[key], b[key])
    trained = load_base(ModelConfig(path=str(part / "model"), device="cpu"))
    torch.testing.assert_close(
        _logp(trained), _logp(load_base(ModelConfig(path=str(full / "model"), device="cpu")))
    )
    assert (_logp(trained) - _logp(_bundled())).abs().max() > 1e-3


def test_lora_with_a_model_trained_from_scratch_is_refused(tmp_path):
    cfg = load_config("tiny-cold-start", ["model.lora={r: 4}", "sft.steps=1"])
    with pytest.raises(ConfigError, match="model.lora"):
        run(cfg, tmp_path / "run")


def test_lora_sft_stage_saves_the_adapter_alone(tmp_path):
    cfg = load_config(
        "tiny-cold-start",
        [
            "model.init=null",
            "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj], save: adapter}",
            "task.train_size=64",
            "task.eval_size=8",
            "sft.steps=3",
            "sft.examples_per_step=16",
            "sft.micro_batch_examples=8",
            "sft.learning_rate=1e-2",
            "sft.warmup_steps=0",
            "eval.before=false",
            "eval.after=false",
            "eval.every=0",
            "log.tensorboard=false",
        ],
    )
    run(cfg, tmp_path / "run")
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "adapter_config.json").exists()
    assert not (model_dir / "model.safetensors").exists()
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    trained = load_base(ModelConfig(path=str(model_dir), device="cpu"))
    assert (_logp(trained) - _logp(_bundled())).abs().max() > 1e-3


def test_a_loaded_base_does_not_change_when_its_file_is_rewritten(tmp_path):
    # transformers maps safetensors files into memory: a frozen LoRA base that is never written
    # would follow a `cp` over its checkpoint in the middle of a run.
    shutil.copytree(bundled_model_dir(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    policy = apply_lora(load_base(ModelConfig(path=str(tmp_path / "m"), device="cpu")), LORA)
    start = _logp(policy)
    shifted = {k: v + 1.0 for k, v in load_file(weights).items()}
    save_file(shifted, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with open(weights, "r+b") as f:  # same inode, as cp writes it
        f.write((tmp_path / "other.safetensors").read_bytes())
    rewritten = load_model(ModelConfig(path=str(tmp_path / "m"), device="cpu"))
    assert (_logp(rewritten) - start).abs().max() > 0.1  # the file did change
    torch.testing.assert_close(_logp(policy), start, rtol=0, atol=0)
