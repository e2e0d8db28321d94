"""One GRPO step — generation, reward, update — by reasonrl and by TRL 1.16.0, in the same run.

The model is Qwen2.5-shaped with random weights (vocab 151,936, tied embeddings); completions
have a fixed length on both sides (the tokenizer's EOS id lies outside the model's vocabulary,
so no side can sample it) and the reward is a cheap function of the text, so both do the same
work. reasonrl runs its real trainer (``train_rl``) with the ``hf`` or ``fast`` engine.

  one GPU:   python bench/grpo_step.py --shape 0.5b --completions 128 --engine fast --peer trl
  scaling:   --shape 0.5b|1.5b|3b  --completions 128|512  (16|64 prompts × 8)
  packed:    --pack-tokens 1024 (our training forwards without padding; --attn picks the kernel)
  CPU smoke: python bench/grpo_step.py --tiny --engine fast --peer trl

Each run adds (or replaces) its entry in ``bench/results/grpo_step_<gpu-or-cpu>.json``: step
time, completion tokens/s, generation / prefill / decode / train time, decode ms per step and its
memory-bandwidth roofline (weights + KV cache read once per decode step ÷ HBM bandwidth), train
MFU (6 · parameters · tokens), peak memory; the first step is a warm-up and is not counted.
Leaves out: a reference model (β = 0, TRL's default), LoRA, vLLM.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

VOCAB = 151_936
SHAPES = {  # hidden, intermediate, layers, heads, kv heads (Qwen2.5 configs)
    "tiny": (64, 128, 2, 4, 2),
    "0.5b": (896, 4864, 24, 14, 2),
    "1.5b": (1536, 8960, 28, 12, 2),
    "3b": (2048, 11008, 36, 16, 2),
}
HBM_BYTES_PER_S = {"H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12}  # spec sheets
BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12}  # dense, spec sheets
RESULTS = Path(__file__).parent / "results"


def parity_reward(completion: str, sample: Any = None) -> Any:
    """The share of completion tokens with an even id: cheap, and it varies within a group."""
    from reasonrl.rewards import RewardResult

    return RewardResult(_parity(completion), "ok")


def _parity(text: str) -> float:
    words = text.split()
    return sum(int(w[1:]) % 2 == 0 for w in words if w[1:].isdigit()) / max(1, len(words))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Words ``t0``…``t151935`` are the model's tokens; ``<eos>`` is id 151,936, out of reach."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB)} | {"<eos>": VOCAB}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="t0", padding_side="left"
    )


def build_model(
    shape: str, dtype: torch.dtype, device: torch.device, gc: bool, attn: str = "sdpa"
) -> Any:
    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32_768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        eos_token_id=VOCAB,
        pad_token_id=0,
        bos_token_id=None,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    model.generation_config.eos_token_id = VOCAB
    model.generation_config.pad_token_id = 0
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def make_prompts(n: int, length: int) -> list[str]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    return [" ".join(f"t{i}" for i in row) for row in ids.tolist()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    gc.collect()  # the previous side's model and optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS


def run_reasonrl(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    from reasonrl.config import load_config
    from reasonrl.logging import RunLogger, read_jsonl
    from reasonrl.rollout import ENGINES
    from reasonrl.tasks.base import Sample
    from reasonrl.train.context import RunContext
    from reasonrl.train.rl import train_rl

    cfg = load_config(
        None,
        [
            f"rl.steps={1 + args.steps}",
            f"rl.prompts_per_step={args.completions // args.group}",
            f"rl.completions_per_prompt={args.group}",
            f"rl.micro_batch_completions={args.micro}",
            "rl.learning_rate=1e-6",
            f"model.pack_tokens={args.pack_tokens}",
            f"rollout.engine={args.engine}",
            f"rollout.max_new_tokens={args.new_tokens}",
            f"rollout.batch_completions={args.completions}",
            "algo.name=grpo",
            "algo.beta=0.0",
            "rewards={parity: {verifier: '__main__:parity_reward'}}",
            "log.checkpoint_every=0",
            "log.samples_per_log=0",
            "log.tensorboard=false",
        ],
    )
    tokenizer = build_tokenizer()
    model = build_model(args.shape, dtype, device, args.gc, args.attn)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    engine = ENGINES[args.engine](model, tokenizer, args.completions)
    prompts = make_prompts(
        args.completions // args.group * (1 + args.steps) * 4, args.prompt_tokens
    )
    samples = [Sample(p, "0") for p in prompts]
    marks: dict[str, Any] = {}

    def after_step(step: int) -> None:
        if step == 1:  # warm-up done: count from here
            _sync(device)
            _reset_peak(device)
            marks["stats"] = dict(vars(engine.stats)) if hasattr(engine, "stats") else None

    with tempfile.TemporaryDirectory() as tmp, RunLogger(Path(tmp), report_to=()) as logger:
        run_dir = Path(tmp)
        ctx = RunContext(cfg, run_dir, logger, on_step=after_step)
        train_rl(ctx, model, None, tokenizer, engine, prompts, samples)
        metrics = [m for m in read_jsonl(Path(tmp) / "metrics.jsonl") if m["step"] > 1]
    step_s = statistics.median(m["perf/step_s"] for m in metrics)
    gen_s = statistics.median(m["perf/generate_s"] for m in metrics)
    tokens = args.completions * args.new_tokens
    out = {
        "params": params,
        "step_s": step_s,
        "step_s_all": [m["perf/step_s"] for m in metrics],
        "completion_tokens_per_s": tokens / step_s,
        "generate_and_reward_s": gen_s,
        "train_s": step_s - gen_s,
        "response_length_mean": statistics.mean(m["response/length_mean"] for m in metrics),
        "peak_gib": _peak_gib(device),
    }
    if marks.get("stats") is not None:
        s0, s1, n = marks["stats"], vars(engine.stats), len(metrics)
        steps = s1["decode_steps"] - s0["decode_steps"]
        out |= {
            "prefill_s": (s1["prefill_s"] - s0["prefill_s"]) / n,
            "prefill_rows": (s1["prefill_rows"] - s0["prefill_rows"]) // n,
            "decode_s": (s1["decode_s"] - s0["decode_s"]) / n,
            "decode_ms_per_step": 1e3 * (s1["decode_s"] - s0["decode_s"]) / max(1, steps),
            "graph_captures": s1["graph_captures"],
            "capture_s": s1["capture_s"],
        }
    else:  # hf: generate() is one call; prefill and decode are not separable from outside
        out["generate_ms_per_token_step"] = 1e3 * gen_s / args.new_tokens
    out["train_tokens_per_step"] = args.completions * (args.prompt_tokens + args.new_tokens)
    return out


def run_trl(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = build_tokenizer()
    model = build_model(args.shape, dtype, device, False, args.attn)  # TRL turns it on itself
    prompts = make_prompts(
        args.completions // args.group * (1 + args.steps) * 4, args.prompt_tokens
    )
    ends: list[float] = []
    gen: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            ends.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            _sync(device)
            ends.append(time.perf_counter())
            if len(ends) == 2:  # warm-up done
                _reset_peak(device)

    generate = model.generate

    def timed_generate(*a: Any, **k: Any) -> Any:
        _sync(device)
        t0 = time.perf_counter()
        out = generate(*a, **k)
        _sync(device)
        gen.append(time.perf_counter() - t0)
        return out

    model.generate = timed_generate
    accumulation = args.completions // args.micro
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            max_steps=1 + args.steps,
            per_device_train_batch_size=args.micro,
            gradient_accumulation_steps=accumulation,
            num_generations=args.group,
            max_completion_length=args.new_tokens,
            temperature=1.0,
            learning_rate=1e-6,
            beta=0.0,
            gradient_checkpointing=args.gc,
            bf16=dtype == torch.bfloat16,
            use_cpu=device.type == "cpu",
            report_to="none",
            logging_steps=10_000,
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **_: [_parity(c) for c in completions],
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
    steps = [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]
    step_s = statistics.median(steps)
    gen_s = statistics.median(gen[1:]) if len(gen) > 1 else float("nan")
    out = {
        "version": trl.__version__,
        "step_s": step_s,
        "step_s_all": steps,
        "completion_tokens_per_s": args.completions * args.new_tokens / step_s,
        "generate_s": gen_s,
        "train_s": step_s - gen_s,
        "peak_gib": _peak_gib(device),
    }
    return out


def roofline(
    args: argparse.Namespace, params: int, dtype: torch.dtype, device: torch.device
) -> dict:
    """The least time a decode step can take: every weight and every live KV entry read once.

    The KV context is the step's average (prompt + half the completion); embeddings are tied,
    so the vocabulary matrix is read once, as the output projection."""
    hidden, _, layers, heads, kv = SHAPES[args.shape]
    head_dim = hidden // heads
    size = torch.finfo(dtype).bits // 8
    context = args.prompt_tokens + args.new_tokens / 2
    kv_bytes = args.completions * layers * 2 * kv * head_dim * size * context
    out: dict[str, Any] = {
        "weight_bytes": params * size,
        "kv_bytes_per_step": kv_bytes,
        "hbm_bytes_per_s": None,
        "min_decode_ms": None,
        "peak_flops": None,
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    match = next((k for k in HBM_BYTES_PER_S if k in name), None)
    bandwidth = args.hbm_tbps * 1e12 if args.hbm_tbps else HBM_BYTES_PER_S.get(match or "")
    if bandwidth:
        out["hbm_bytes_per_s"] = bandwidth
        out["min_decode_ms"] = 1e3 * (params * size + kv_bytes) / bandwidth
    if match and dtype == torch.bfloat16:
        out["peak_flops"] = BF16_FLOPS[match]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="0.5b")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke: --shape tiny, small sizes")
    parser.add_argument("--completions", type=int, default=128, help="per step (prompts × group)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256, help="completion length (fixed)")
    parser.add_argument("--micro", type=int, default=32, help="completions per forward/backward")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--engine", choices=["hf", "fast"], default="fast")
    parser.add_argument("--peer", choices=["trl", "none"], default="trl")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    parser.add_argument("--no-gc", dest="gc", action="store_false", help="no grad checkpointing")
    parser.add_argument(
        "--pack-tokens",
        type=int,
        default=0,
        help="our training forwards on packed rows of this many tokens (0: padded)",
    )
    parser.add_argument(
        "--attn",
        default="sdpa",
        help="attention implementation of the model (sdpa, eager, flex_attention, "
        "flash_attention_2), both sides",
    )
    parser.add_argument("--hbm-tbps", type=float, default=None, help="override HBM bandwidth")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.shape = "tiny"
        args.completions, args.group, args.micro = 16, 4, 8
        args.prompt_tokens, args.new_tokens, args.steps = 16, 32, 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.completions % args.group or args.completions % args.micro:
        sys.exit("--group and --micro must divide --completions")

    ours = run_reasonrl(args, device, dtype)
    _reset_peak(device)
    peer = run_trl(args, device, dtype) if args.peer == "trl" else None
    roof = roofline(args, ours["params"], dtype, device)
    if roof["min_decode_ms"] and "decode_ms_per_step" in ours:
        ours["roofline_fraction"] = roof["min_decode_ms"] / ours["decode_ms_per_step"]
    if roof["peak_flops"]:
        flops = 6 * ours["params"] * ours["train_tokens_per_step"]
        ours["train_mfu"] = flops / ours["train_s"] / roof["peak_flops"]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    entry = {
        "label": f"{gpu}: measured" if gpu else "CPU smoke run — NOT H100 figures",
        "device": gpu or f"cpu ({platform.processor() or platform.machine()})",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "reasonrl": ours,
        "trl": peer,
        "roofline": roof,
        "speedup_vs_trl": peer
        and ours["completion_tokens_per_s"] / peer["completion_tokens_per_s"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    tag = "cpu"
    if gpu:  # "NVIDIA H100 80GB HBM3" → h100
        known = ("h100", "h200", "a100", "l40s", "l4")
        tag = next((k for k in known if k in gpu.lower()), gpu.lower().replace(" ", "_"))
    path = args.out or RESULTS / f"grpo_step_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(path.read_text()) if path.exists() else []
    fields = ("shape", "completions", "engine", "new_tokens", "pack_tokens")
    key = {k: entry["config"].get(k) for k in fields}
    entries = [e for e in entries if {k: e["config"].get(k) for k in fields} != key] + [entry]
    path.write_text(json.dumps(entries, indent=2) + "\n")
    print(json.dumps(entry, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
