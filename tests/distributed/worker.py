"""What the distributed tests run on each rank (``torchrun --nproc-per-node 2 worker.py OUT``),
and the tiny model and training step that the tests run again in one process to compare.

Rank 0 writes everything the tests assert on to ``OUT/results.pt``.
"""

from __future__ import annotations

import copy
import datetime
import sys
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.tensor import DTensor
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonrl.algos.aggregate import AGGREGATIONS, aggregate
from reasonrl.distributed import (
    Ranks,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    full_model_state,
    full_weights,
    global_counts,
    gradient_sync,
    init_distributed,
    load_train_state,
    save_train_state,
    shard,
    shutdown,
    unwrap,
    wrap_model,
)
from reasonrl.models.forward import completion_logprobs

PROMPTS, GROUP, PROMPT_LEN, COMPLETION_LEN, STEPS, CLIP = 4, 2, 3, 6, 3, 0.05


def tiny_model(lora: bool) -> torch.nn.Module:
    """A 2-layer random Qwen2 in float64, the same on every rank (LoRA: r=4 on q and v). Tied
    embeddings like the bundled model's; an odd vocabulary, so FSDP2 shards it unevenly."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=33,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).double()
    if lora:
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        model = get_peft_model(model, cfg, autocast_adapter_dtype=False)
    return model


def global_batch(step: int) -> dict[str, torch.Tensor]:
    """PROMPTS × GROUP completions (a prompt's group in consecutive rows), with completions of
    different lengths and random advantages: the whole step, identical on every rank."""
    g = torch.Generator().manual_seed(100 + step)
    rows = PROMPTS * GROUP
    ids = torch.randint(3, 32, (rows, PROMPT_LEN + COMPLETION_LEN), generator=g)
    lengths = torch.randint(1, COMPLETION_LEN + 1, (rows,), generator=g)
    mask = (torch.arange(COMPLETION_LEN) < lengths[:, None]).double()
    return {"ids": ids, "mask": mask, "adv": torch.randn(rows, generator=g, dtype=torch.float64)}


def train(
    model: torch.nn.Module, ranks: Ranks, aggregation: str, steps: int = STEPS
) -> tuple[torch.optim.Optimizer, list[float]]:
    """``steps`` AdamW steps on this rank's prompts of each global batch, two micro-batches a
    step, loss normalised by the global totals, gradients clipped; returns the optimizer and
    the gradient norms before clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    norms = []
    for step in range(steps):
        batch = global_batch(step)
        mine = shard(PROMPTS, ranks)
        rows = list(range(mine.start * GROUP, mine.stop * GROUP))
        mask = batch["mask"][rows]
        tokens, seqs = global_counts(int(mask.sum()), len(rows), ranks)
        halves = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
        for i, part in enumerate(halves):
            with gradient_sync(model, sync=i == len(halves) - 1):
                ids = batch["ids"][part]
                logp, _ = completion_logprobs(model, ids, torch.ones_like(ids), COMPLETION_LEN)
                per_token = -logp * batch["adv"][part, None]
                loss = aggregate(
                    aggregation, per_token, batch["mask"][part], tokens, seqs, COMPLETION_LEN
                )
                loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, CLIP)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer, norms


def full_train_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state, whole and on CPU, keyed by parameter name (any world size)."""
    inner = model.module if hasattr(model, "module") else model
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(inner, optimizer, options=options)
    return {"model": model_sd, "optim": optim_sd}


def _invariance(ranks: Ranks, out: Path) -> dict[str, Any]:
    res = {}
    for parallel in ("ddp", "fsdp"):
        for lora in (False, True):
            for aggregation in AGGREGATIONS:
                model = wrap_model(tiny_model(lora), parallel, ranks, torch.device("cpu"))
                _, norms = train(model, ranks, aggregation)
                state = full_model_state(model, ranks)
                res[(parallel, lora, aggregation)] = (state, norms)
                if parallel == "fsdp" and aggregation == "token_mean" and ranks.is_main:
                    unwrap(model).save_pretrained(out / f"hf-lora-{lora}", state_dict=dict(state))
    return res


def _generation(ranks: Ranks) -> dict[str, Any]:
    """Ranks run different numbers of forwards and generate different lengths under FSDP2."""
    plain = tiny_model(lora=False)
    model = wrap_model(copy.deepcopy(plain), "fsdp", ranks, torch.device("cpu"))
    prompt = torch.tensor([[3, 4, 5]])
    new = 2 + 5 * ranks.rank
    with torch.no_grad(), full_weights(model):
        logits = [model(input_ids=prompt).logits for _ in range(1 + 3 * ranks.rank)]
        got = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    with torch.no_grad():
        want = plain.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        err = max(float((x - plain(input_ids=prompt).logits).abs().max()) for x in logits)
    # After leaving, the shards are back in place and a training step is the usual one.
    resharded = all(isinstance(p, DTensor) for p in model.parameters())
    _, norms = train(model, ranks, "token_mean", steps=1)
    return {
        "tokens": (got.tolist(), want.tolist()),
        "logit_err": err,
        "norms": norms,
        "resharded": resharded,
    }


def _checkpoints(ranks: Ranks, out: Path) -> dict[str, Any]:
    res = {}
    for parallel in ("ddp", "fsdp"):
        model = wrap_model(tiny_model(lora=False), parallel, ranks, torch.device("cpu"))
        optimizer, _ = train(model, ranks, "token_mean", steps=1)
        save_train_state(out / f"two-{parallel}", model, optimizer)
        res[f"saved-{parallel}"] = full_train_state(model, optimizer)
        # A fresh model and optimizer on 2 ranks resume what one process saved.
        model = wrap_model(tiny_model(lora=False), parallel, ranks, torch.device("cpu"))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
        load_train_state(out / "one", model, optimizer)
        res[f"loaded-{parallel}"] = full_train_state(model, optimizer)
    return res


def main(out: Path) -> None:
    ranks = init_distributed("cpu", timeout=datetime.timedelta(seconds=60))
    results: dict[str, Any] = {"ranks": all_gather_objects(ranks, ranks)}
    results["shards"] = all_gather_objects(list(shard(5, ranks, even=False)), ranks)
    results["broadcast"] = broadcast_object(f"from rank {ranks.rank}", ranks)
    results["sums"] = (
        all_reduce_sum(ranks.rank + 1, ranks),
        all_reduce_sum(ranks.rank + 0.5, ranks),
    )
    results["invariance"] = _invariance(ranks, out)
    results["generation"] = all_gather_objects(_generation(ranks), ranks)
    results["checkpoints"] = _checkpoints(ranks, out)
    if ranks.is_main:
        torch.save(results, out / "results.pt")
    barrier(ranks)  # rank 1 stays up until the results are written
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
