"""The time of one weights push to 2 rollout workers, through the object store and through a gloo
broadcast (``distributed.weight_sync``), both in the same run.

    PYTHONPATH=. python bench/weight_sync.py        # → bench/results/weight_sync_cpu.json
    PYTHONPATH=. python bench/weight_sync.py --repeats 3 --models bundled

Models: the bundled one (1.6 M parameters, float32 here) and a random Qwen2 of about 110 M
parameters (hidden 768, 12 layers, vocabulary 32,000, tied, float32: 0.44 GB). Per model and
method, after a first push (the group formed, the actors warm), ``--repeats`` times:
- ``push_s``: the trainer's ``RayRollouts.push_weights`` (``ray.put``; or the broadcast until
  every worker has received it);
- ``load_s``: in each worker's next generation call (one prompt, one token), the time outside
  generation: loading the version named (fetching it from the object store, or copying the
  staged buffers) plus Ray's call overhead; the slower worker's;
- ``total_s``: the two summed; the median of each is reported.
On one machine the object store is shared memory, and gloo goes through the loopback
interface: neither shows a network. The trainer, 2 rollout workers and 1 reward worker share
this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonrl.config import load_config
from reasonrl.models import load_model, load_tokenizer
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.workers import RayRollouts

RESULTS = Path(__file__).parent / "results"
METHODS = ("object_store", "collective")


def random_qwen2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).eval()


def bench(name: str, model: torch.nn.Module, method: str, repeats: int) -> dict:
    import ray

    cfg = load_config(
        "quickstart",
        [
            "model.dtype=float32",
            "distributed.backend=ray",
            "rollout.workers=2",
            "rewards.workers=1",
            f"distributed.weight_sync={method}",
            "rollout.max_new_tokens=1",
        ],
    )
    tokenizer = load_tokenizer("bundled")
    train, _ = load_splits(cfg.task)
    prompt = render_prompt(train[0], tokenizer, cfg.task.prompt, cfg.task.chat_template)
    plan = lambda step, round_: ([0], [0])  # noqa: E731  (no rounds dispatched here)
    pushes, loads = [], []
    with (
        tempfile.TemporaryDirectory() as out,
        RayRollouts(cfg, model, tokenizer, [prompt], train[:1], plan, Path(out), Console()) as pool,
    ):
        for version in range(1, repeats + 2):  # the first: warm-up
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)  # a new version
            t0 = time.perf_counter()
            pool.push_weights(model, version)
            push = time.perf_counter() - t0
            weights = [pool.weights[version]] if pool.sync is None else []  # as dispatch sends
            t0 = time.perf_counter()
            calls = [
                pool.generators.submit(w, "generate", weights, version, [prompt], [version])
                for w in range(2)
            ]
            outside = [
                time.perf_counter() - t0 - seconds for _, seconds in ray.get([c.ref for c in calls])
            ]
            if version > 1:
                pushes.append(push)
                loads.append(max(outside))
    totals = [p + q for p, q in zip(pushes, loads, strict=True)]
    case = {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "method": method,
        "repeats": repeats,
        "push_s": statistics.median(pushes),
        "load_s": statistics.median(loads),
        "total_s": statistics.median(totals),
        "push_s_all": pushes,
        "load_s_all": loads,
    }
    print(json.dumps(case))
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["bundled", "qwen2-110m"])
    parser.add_argument("--out", type=Path, default=RESULTS / "weight_sync_cpu.json")
    args = parser.parse_args()
    models = {
        "bundled": lambda: load_model(
            load_config("quickstart", ["model.dtype=float32"]).model, torch.device("cpu")
        ),
        "qwen2-110m": random_qwen2,
    }
    cases = [
        bench(name, models[name](), method, args.repeats)
        for name in args.models
        for method in METHODS
    ]
    entry = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "workers": 2,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entry, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
