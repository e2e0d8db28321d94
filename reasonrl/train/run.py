"""Running one recipe end to end: every stage (sft, rm, dpo, rl) on one ``RunContext``
(reasonrl.train.context): open it (run directory, config.yaml, seed, device, logger), run the
stage on it, finish it (``summary.json`` and ``report.html``).

CPU: ``reasonrl quickstart`` or ``reasonrl run RECIPE`` both land in :func:`run`; one GPU: the
same, ``model.device=auto`` picks CUDA. Several processes: ``torchrun --nproc-per-node N -m
reasonrl run RECIPE`` or ``accelerate launch --multi_gpu --num_processes N -m reasonrl run
RECIPE`` (docs/distributed.md): :func:`run` joins the process group (gloo on CPU, NCCL on GPU),
and the models are wrapped by ``wrap_model`` per ``train.parallel`` (DDP or FSDP2).

A policy stage (:func:`policy_stage`: sft, dpo, rl) evaluates before, trains, saves the model
and evaluates after; the rm stage is ``reasonrl.train.rm.rm_stage``.

What ``train_rl`` receives: ``policy`` wrapped by ``wrap_model`` (a DDP wrapper, an FSDP2-sharded
model, or the model itself on one process: ``unwrap`` reaches its methods, generation under
FSDP2 runs inside ``full_weights(policy)``); ``ref`` the frozen reference — under FSDP2 sharded
by ``wrap_model`` as well, under DDP a plain whole replica on this rank's device, None under LoRA
(the policy with its adapters disabled); ``critic`` (PPO) wrapped like the policy; ``engine``
built on ``unwrap(policy)``; ``ranks`` this process's place.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from reasonrl.checks import check_config
from reasonrl.config import ConfigError, RunConfig
from reasonrl.distributed import (
    Ranks,
    full_model_state,
    init_distributed,
    is_sharded,
    unwrap,
    wrap_model,
)
from reasonrl.envs.protocol import tool_trace
from reasonrl.eval.summary import print_summary, score_changes
from reasonrl.models import (
    init_model,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_model_path,
)
from reasonrl.models.lora import (
    apply_lora,
    enable_activation_checkpointing,
    load_base,
    save_model,
)
from reasonrl.models.tokenizer import train_tokenizer
from reasonrl.rollout import make_engine
from reasonrl.tasks import Sample, load_splits, render_prompt
from reasonrl.tasks.prompts import R1_INSTRUCTION
from reasonrl.tasks.sources import read_sft_pairs
from reasonrl.tasks.traces import solution_text
from reasonrl.train.context import MODEL_DIR, HeldOut, RunContext
from reasonrl.train.memory import module_mib, peak_memory_mib
from reasonrl.train.rm import rm_stage


def sft_pairs(cfg: RunConfig, train: list[Sample]) -> list[tuple[Sample, str]]:
    """(sample, target completion) for the SFT stage: generated traces or a JSONL file."""
    if cfg.sft.data == "traces":
        rng = random.Random(cfg.seed)
        pairs = []
        for s in train:
            estimate = rng.random() < cfg.sft.estimate_fraction
            share = _tool_share(cfg.sft.tool_fraction, s)
            # drawn only when asked for, so that recipes without tools keep their traces
            tool = share > 0 and rng.random() < share
            text = tool_trace(s.meta["expression"]) if tool and "expression" in s.meta else None
            pairs.append((s, text or solution_text(s, estimate)))
        return pairs
    if not cfg.sft.train_path:
        raise ConfigError("sft.data=jsonl needs sft.train_path")
    return read_sft_pairs(cfg.sft.train_path)


def _tool_share(fraction: float | dict[str, float], sample: Sample) -> float:
    if isinstance(fraction, float):
        return fraction
    label = sample.meta.get("difficulty")
    if label not in fraction:
        raise ConfigError(
            f"sft.tool_fraction gives no share for difficulty {label!r} (it names "
            f"{', '.join(sorted(fraction))}): add it, or set one share for every sample"
        )
    return fraction[label]


def build_model(
    cfg: RunConfig, train: list[Sample], resume_from: Path | None, device: torch.device
) -> tuple[torch.nn.Module, Any]:
    """The model to train: a checkpoint on resume, a fresh one from ``model.init``, or
    ``model.path``; with ``model.lora``, that model (a LoRA checkpoint: its base) wrapped in the
    adapters (a LoRA checkpoint's own)."""
    lora = cfg.model.lora
    if lora is not None and cfg.model.init is not None:
        raise ConfigError("model.lora adapts pretrained weights: it cannot go with model.init")
    if resume_from is not None and lora is None:
        tokenizer = load_tokenizer(str(resume_from))
        model = load_model(cfg.model.model_copy(update={"path": str(resume_from)}), device)
    elif cfg.model.init is not None:
        corpus = [
            f"user\n{s.prompt}\n{R1_INSTRUCTION}\nassistant\n{completion}"
            for s, completion in sft_pairs(cfg, train[:5000])[:5000]
        ]
        tokenizer = train_tokenizer(corpus, cfg.model.init.vocab_size)
        model = init_model(cfg.model.init, tokenizer, cfg.model.dtype).to(device)
    else:
        model = load_base(cfg.model, device)
        tokenizer = load_tokenizer(str(resume_from or cfg.model.path))
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora, resume_from)
    return model, tokenizer


def build_critic(cfg: RunConfig, resume_from: Path | None, device: torch.device) -> Any:
    """PPO's value model: from the checkpoint on resume, else ``algo.critic_path`` or the policy's
    starting weights with a new scalar head. None for critic-free algorithms."""
    if cfg.algo.name != "ppo":
        return None
    from reasonrl.models.value import ValueModel
    from reasonrl.train.critic import CRITIC_DIR

    if resume_from is not None:
        path = str(resume_from / CRITIC_DIR)
    else:
        path = resolve_model_path(cfg.algo.critic_path or cfg.model.path)
    return ValueModel.from_pretrained(path, getattr(torch, cfg.model.dtype)).to(device)


def rl_memory(
    cfg: RunConfig, policy: torch.nn.Module, ref: torch.nn.Module | None, critic: Any
) -> dict[str, float]:
    """MiB of every model an RL run holds: the policy, its trainable part and AdamW's two
    moments of it, the reference (0 under LoRA: the adapter-disabled policy), the critic and its
    optimizer state, and the reward models."""
    from reasonrl.rewards.compose import reward_terms

    trainable = module_mib(policy, trainable_only=True)
    memory = {
        "policy_mib": module_mib(policy),
        "trainable_mib": trainable,
        "optimizer_mib": 2 * trainable,
        "reference_mib": module_mib(ref) if ref is not None else 0.0,
        "critic_mib": module_mib(critic) if critic is not None else 0.0,
        "critic_optimizer_mib": 2 * module_mib(critic, True) if critic is not None else 0.0,
    }
    reward_models = [getattr(t.verifier, "model", None) for t in reward_terms(cfg.rewards)]
    memory["reward_models_mib"] = sum(
        module_mib(m) for m in reward_models if isinstance(m, torch.nn.Module)
    )
    return memory


def run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the recipe ``cfg`` in ``run_dir``; returns the summary written to summary.json.
    The run holds the directory's lock from start to end: a second run there is refused.
    Started by a launcher (torchrun, accelerate), every process calls it: the first call joins
    the process group, which the command line closes when it exits."""
    check_config(cfg)  # every model, file and verifier it names, before anything slow
    ranks = init_distributed(pick_device(cfg.model.device).type)
    stage = rm_stage if cfg.stage == "rm" else policy_stage
    with RunContext.open(
        cfg, run_dir, resume=resume, overwrite=overwrite, console=console, ranks=ranks
    ) as ctx:
        return ctx.finish(stage(ctx))


def save_final(
    model: torch.nn.Module, tokenizer: Any, path: Path, cfg: RunConfig, ranks: Ranks
) -> None:
    """The stage's ``model/`` directory, written by rank 0 (``save_model``); an FSDP2 model is
    first gathered from every rank, and a LoRA one is then saved as its adapter."""
    if is_sharded(model):
        whole = full_model_state(model, ranks)
        if ranks.is_main:
            model.save_pretrained(path, state_dict=whole)
            tokenizer.save_pretrained(path)
    elif ranks.is_main:
        save_model(unwrap(model), tokenizer, path, cfg.model.lora)


def policy_stage(ctx: RunContext) -> dict[str, Any]:
    """An sft, dpo or rl stage: evaluate, train, save the model, evaluate again; returns the
    stage's part of ``summary.json`` and prints the before/after table."""
    cfg, console, device, ranks = ctx.cfg, ctx.console, ctx.device, ctx.ranks
    parallel = cfg.train.parallel
    # FSDP2 shards a model that arrives on the CPU layer by layer: no device holds it whole
    sharded = ranks.world_size > 1 and parallel == "fsdp"
    load_on = torch.device("cpu") if sharded else device
    train, held_out = load_splits(cfg.task)
    model, tokenizer = build_model(cfg, train, ctx.resume_from, load_on)
    console.print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}; "
        f"{len(train)} train / {len(held_out)} held-out problems"
    )
    ref = None  # under LoRA the reference is the policy with its adapters disabled
    if cfg.stage == "rl" and cfg.algo.beta > 0 and cfg.model.lora is None:
        ref = copy.deepcopy(model) if not ctx.resumed else load_base(cfg.model, load_on)
        ref.eval().requires_grad_(False)
        # FSDP2 shards the reference too; under DDP it stays a whole replica (no gradients)
        ref = wrap_model(ref, "fsdp", ranks, device) if sharded else ref.to(device)
    model = wrap_model(model, parallel, ranks, device)
    render = lambda s: render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template)  # noqa: E731
    engine = make_engine(cfg.rollout, unwrap(model), tokenizer, cfg.rollout.batch_completions)
    eval_engine = engine  # one vLLM engine in memory, not two (it sizes its own batches)
    if cfg.rollout.engine != "vllm":
        eval_engine = make_engine(cfg.rollout, unwrap(model), tokenizer, cfg.eval.batch_completions)
    ctx.use_held_out(HeldOut(eval_engine, [render(s) for s in held_out], held_out))
    before = ctx.eval_before()

    memory = None
    if cfg.stage == "sft":
        from reasonrl.train.sft import train_sft

        steps = train_sft(ctx, model, tokenizer, [(render(s), c) for s, c in sft_pairs(cfg, train)])
    elif cfg.stage == "dpo":
        from reasonrl.tasks.preferences import encode_pairs, load_preference_pairs
        from reasonrl.train.dpo import train_dpo

        data = cfg.dpo.data
        train_text, eval_text = load_preference_pairs(data, tokenizer, train, held_out, render)
        train_enc, cut_train = encode_pairs(train_text, tokenizer, data.max_length)
        eval_enc, cut_eval = encode_pairs(eval_text, tokenizer, data.max_length)
        console.print(
            f"preference pairs: {len(train_enc)} train ({cut_train} truncated), "
            f"{len(eval_enc)} held-out ({cut_eval} truncated) at max_length {data.max_length}"
        )
        steps = train_dpo(ctx, model, tokenizer, train_enc, eval_enc)
    else:
        from reasonrl.train.rl import train_rl

        critic = build_critic(cfg, ctx.resume_from, load_on)
        if critic is not None:
            critic = wrap_model(critic, parallel, ranks, device)
        memory = rl_memory(cfg, model, ref, critic)
        console.print(
            "weights in memory (MiB): "
            + ", ".join(f"{k.removesuffix('_mib')} {v:.1f}" for k, v in memory.items())
        )
        prompts = [render(s) for s in train]
        steps = train_rl(ctx, model, ref, tokenizer, engine, prompts, train, critic)
        memory[f"peak_{device.type}_mib"] = peak_memory_mib(device)
    save_final(model, tokenizer, ctx.run_dir / MODEL_DIR, cfg, ranks)
    after = ctx.eval_after(steps)

    summary: dict[str, Any] = {
        "steps": steps,
        "before": before,
        "after": after,
        "model_dir": str(ctx.run_dir / MODEL_DIR),
    }
    if memory is not None:
        summary["memory"] = memory
    if changes := score_changes(summary):
        summary["score_changes"] = changes
    print_summary(console, summary)
    return summary
