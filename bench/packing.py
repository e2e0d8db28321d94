"""Training forward + backward on padded against packed rows (``model.pack_tokens``).

    PYTHONPATH=. python bench/packing.py                 # → bench/results/packing_cpu.json
    PYTHONPATH=. python bench/packing.py --device cuda --shape 0.5b --attn sdpa
    PYTHONPATH=. python bench/packing.py --device cuda --shape 0.5b --attn flash_attention_2

One micro-batch of ``--completions`` sequences laid out as the rollout engines return them,
``[prompt, left-padded | completion, right-padded]``, with lengths drawn uniformly (prompts from
``--prompt-tokens`` ÷ 2 to ``--prompt-tokens``, completions from 1 to ``--new-tokens``: RL
completions stop at EOS at every length). Each case times ``completion_logprobs`` and the
backward of a weighted sum of its log-probs — what the policy loss costs — as the median of
``--repeats`` after one warm-up, and counts the tokens run through the model (padded: every
cell; packed: the real tokens plus the last row's filler, none). Shapes: ``bundled`` (the
tiny-arith checkpoint) or a Qwen2.5 shape of ``bench/grpo_step.py`` with random weights.
On sdpa and eager, a packed row's attention is one [row × row] block-diagonal mask: work on
the masked blocks is still done, so rows much longer than a sequence cost attention FLOPs.
Flash attention (varlen) and flex attention skip them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from reasonrl.config import ModelConfig
from reasonrl.models import load_model
from reasonrl.models.forward import completion_logprobs, pack_rows

RESULTS = Path(__file__).parent / "results"


def make_batch(
    n: int, prompt_tokens: int, new_tokens: int, vocab: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids in the rollout layout with uniformly drawn lengths."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(prompt_tokens // 2, prompt_tokens + 1, (n,), generator=gen)
    completion_lens = torch.randint(1, new_tokens + 1, (n,), generator=gen)
    ids = torch.randint(3, vocab, (n, prompt_tokens + new_tokens), generator=gen)
    columns = torch.arange(prompt_tokens + new_tokens)
    mask = (columns >= prompt_tokens - prompt_lens[:, None]) & (
        columns < prompt_tokens + completion_lens[:, None]
    )
    return ids * mask, mask.long()


def time_case(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    new_tokens: int,
    pack: int,
    repeats: int,
) -> float:
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logp, _ = completion_logprobs(model, ids, mask, new_tokens, pack_tokens=pack)
        (logp * mask[:, -new_tokens:]).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def build(args: argparse.Namespace) -> torch.nn.Module:
    if args.shape == "bundled":
        model = load_model(ModelConfig(device=args.device))
        model.set_attn_implementation(args.attn)
        return model.train()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from grpo_step import build_model

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    return build_model(args.shape, dtype, torch.device(args.device), False, args.attn).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="bundled", help="bundled, tiny, 0.5b, 1.5b or 3b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--pack", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build(args)
    vocab = model.config.vocab_size
    ids, mask = make_batch(args.completions, args.prompt_tokens, args.new_tokens, vocab, 0)
    lengths = mask.sum(1).tolist()
    real = sum(lengths)
    cases = []
    for pack in [0, *args.pack]:
        rows = pack_rows(lengths, pack) if pack else []
        seconds = time_case(model, ids, mask, args.new_tokens, pack, args.repeats)
        cases.append(
            {
                "pack_tokens": pack,
                "rows": len(rows) if pack else args.completions,
                "tokens_run": real if pack else mask.numel(),
                "fwd_bwd_s": seconds,
                "real_tokens_per_s": real / seconds,
            }
        )
        print(json.dumps(cases[-1]))
    padded = cases[0]["fwd_bwd_s"]
    for case in cases:
        case["speedup_vs_padded"] = padded / case["fwd_bwd_s"]
    entry = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "real_tokens": real,
        "padded_tokens": mask.numel(),
        "cases": cases,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    tag = "cuda" if args.device == "cuda" else "cpu"
    path = args.out or RESULTS / f"packing_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["config"] != entry["config"]] + [entry]
    path.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"padded {mask.numel()} tokens, real {real}; wrote {path}")


if __name__ == "__main__":
    main()
