"""Peak memory of one RL step with LoRA against full fine-tuning, on the same model.

    PYTHONPATH=. python bench/lora_memory.py                # → bench/results/lora_memory_cpu.json
    PYTHONPATH=. python bench/lora_memory.py --device cuda  # → bench/results/lora_memory_cuda.json
    PYTHONPATH=. python bench/lora_memory.py --hidden 896 --layers 24 --heads 14 --kv-heads 2 \
        --intermediate 4864 --device cuda                    # Qwen2.5-0.5B's shape

Each case runs in a fresh process: a random Qwen2-shaped model with the bundled tokenizer (its
384-token vocabulary keeps the logits small, so the weights, gradients and optimizer state are
what differ), then one step of reasonrl's own ``train_rl`` — generate, score, reference and
policy log-probs, backward, AdamW — on the quickstart recipe (GRPO with a k3 KL to the reference).
Full fine-tuning keeps a frozen copy of the policy as the reference, as ``reasonrl run`` does;
LoRA (r = 16, all linear layers) uses the adapter-disabled policy instead.

Measured: CPU — the process's peak resident set during the step (VmHWM, reset through
``/proc/self/clear_refs`` once the policy is built) minus its resident set at that point, with
glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors go back to the
OS: with glibc's default sliding threshold, freed activations stay in the heap and the peak
reflects fragmentation more than use (it ranked LoRA above full fine-tuning);
CUDA — ``torch.cuda.max_memory_allocated`` during the step minus what was allocated then.
So each figure is what the step adds on top of the policy's own weights (for full fine-tuning
that includes the reference copy). Leaves out: allocator caching (CUDA reserved memory) and the
rollout engine's KV cache beyond what ``generate`` allocates.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CASES = {
    "full": [],
    "lora": ["model.lora={r: 16, alpha: 32}"],
    "full+checkpointing": ["model.gradient_checkpointing=true"],
    "lora+checkpointing": ["model.lora={r: 16, alpha: 32}", "model.gradient_checkpointing=true"],
}


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _mark(device: str) -> int:
    """Start measuring; returns the baseline in bytes."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    return _status_kib("VmRSS") * 1024


def _peak(device: str) -> int:
    """The peak in bytes since ``_mark``."""
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status_kib("VmHWM") * 1024


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One RL step in this process; returns its figures."""
    from reasonrl.config import ModelInit, load_config
    from reasonrl.logging import RunLogger
    from reasonrl.models import init_model, load_tokenizer
    from reasonrl.models.lora import apply_lora, enable_activation_checkpointing
    from reasonrl.rollout import HFEngine
    from reasonrl.tasks import load_splits, render_prompt
    from reasonrl.train.context import RunContext
    from reasonrl.train.rl import train_rl

    cfg = load_config(
        "quickstart",
        [
            "rl.steps=1",
            f"rl.prompts_per_step={args.prompts}",
            f"rl.completions_per_prompt={args.completions}",
            f"rl.micro_batch_completions={args.micro}",
            f"rollout.max_new_tokens={args.new_tokens}",
            "rollout.top_k=0",
            "task.train_size=200",
            "task.eval_size=10",
            "log.checkpoint_every=0",
            "log.samples_per_log=0",
            "log.tensorboard=false",
            *CASES[name],
        ],
    )
    torch.manual_seed(0)
    tokenizer = load_tokenizer("bundled")
    shape = ModelInit(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=512,
    )
    device = torch.device(args.device)
    model = init_model(shape, tokenizer, args.dtype).to(device)
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train]
    params = sum(p.numel() for p in model.parameters())

    base = _mark(args.device)
    t0 = time.perf_counter()
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    ref = None
    if cfg.model.lora is not None:
        model = apply_lora(model, cfg.model.lora)
    else:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    engine = HFEngine(model, tokenizer, cfg.rollout.batch_completions)
    with tempfile.TemporaryDirectory() as tmp, RunLogger(Path(tmp), report_to=()) as log:
        train_rl(RunContext(cfg, Path(tmp), log), model, ref, tokenizer, engine, prompts, train)
    step_s = time.perf_counter() - t0
    peak = _peak(args.device)
    return {
        "case": name,
        "params": params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "step_added_bytes": peak - base,
        "step_s": step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--completions", type=int, default=4)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # set in the per-case subprocess
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return

    results = []
    for name in args.cases.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--case", name]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            sys.exit(f"case {name} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(
            f"{name:>20}: +{row['step_added_bytes'] / 2**20:8.1f} MiB during the step "
            f"(weights {row['weights_bytes'] / 2**20:.1f} MiB, "
            f"{row['trainable_params'] / 1e6:.2f}M of {row['params'] / 1e6:.1f}M trainable), "
            f"{row['step_s']:.1f} s"
        )
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report = {
        "bench": "lora_memory",
        "command": " ".join(["python", "bench/lora_memory.py", *sys.argv[1:]]),
        "device": device_name,
        "torch": torch.__version__,
        "metric": "peak RSS (VmHWM) minus RSS before the step, MALLOC_MMAP_THRESHOLD_=131072"
        if args.device == "cpu"
        else "torch.cuda.max_memory_allocated minus memory_allocated before the step",
        "settings": {k: v for k, v in vars(args).items() if k not in ("case", "out", "cases")},
        "results": results,
    }
    out_path = args.out or Path(__file__).parent / "results" / f"lora_memory_{args.device}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
