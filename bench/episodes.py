"""Multi-turn tool-calling episodes: the ``hf`` engine against the ``fast`` engine, in one run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/episodes.py   # → bench/results/episodes_cpu.json
    PYTHONPATH=. python bench/episodes.py --device cuda --group 32

The shipped ``bundled-tool-use`` makes one kind of call only, so the run first fits a tiny
Qwen2 (the bundled tokenizer, ``--hidden`` × ``--layers``) to write the tool-calling scripts of
the tests (``reasonrl.testing.tool_model``: a calculator call and its answer, an answer without
a call, an unknown tool, a prompt where it calls or answers by hand) after their chat-template
prompts.
Both engines then generate the same ``--group`` seeded episodes of each prompt (calculator
toolboxes, up to 3 turns), interleaved in each of ``--repeats`` rounds after a warm-up; the
median ``generate`` time is reported with the forwards each engine ran and the tokens of those
wider than one token a row (prefill tokens, padding included as computed): ``hf`` re-prefills
every row's whole context at each turn; ``fast`` prefills each group's prompt once and feeds
each tool answer, with the token drawn before it, into the cache the row holds, in steps as wide
as the longest answer fed (every live row pays that width: holes). Its saving is the prefix it
does not recompute. Checks that both engines wrote the same episodes. Leaves out: real
tool-using checkpoints and bigger models (the tiny model's forward is cheap, so Python and
per-turn overhead weigh more here than on a GPU with a 0.5B model).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from reasonrl.envs import Toolbox, calculator
from reasonrl.models import load_tokenizer
from reasonrl.rollout import FastEngine, HFEngine
from reasonrl.tasks import Sample, render_prompt
from reasonrl.testing import CHOICE, SCRIPTS, tool_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group", type=int, default=8, help="episodes per prompt")
    parser.add_argument("--new-tokens", type=int, default=96, help="budget of an episode")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    tok = load_tokenizer("bundled")
    model = tool_model(tok, hidden=args.hidden, layers=args.layers, device=args.device)
    model.config._attn_implementation = "sdpa"
    unique = [*SCRIPTS, CHOICE]
    rows = [render_prompt(Sample(q, "0"), tok) for q in unique for _ in range(args.group)]
    work = [0, 0]  # forwards, and the tokens of those wider than one per row (padding in)

    def count_prefill(_module: Any, _args: Any, kwargs: dict) -> None:
        work[0] += 1
        if kwargs["input_ids"].shape[1] > 1:
            work[1] += kwargs["input_ids"].numel()

    model.register_forward_pre_hook(count_prefill, with_kwargs=True)
    engines: dict[str, Any] = {"hf": HFEngine(model, tok), "fast": FastEngine(model, tok)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    tokens: dict[str, list[int]] = {name: [] for name in engines}
    forwards: dict[str, list[int]] = {name: [] for name in engines}
    same = True
    for r in range(args.repeats + 1):  # round 0 is a warm-up
        seeds = [r * len(rows) + i for i in range(len(rows))]
        outs = {}
        for name, engine in engines.items():
            work[:] = [0, 0]
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[name] = engine.generate(
                rows,
                max_new_tokens=args.new_tokens,
                temperature=args.temperature,
                seeds=seeds,
                toolboxes=[Toolbox([calculator]) for _ in rows],
                max_turns=3,
            )
            if args.device == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
                forwards[name].append(work[0])
                tokens[name].append(work[1])
        same &= outs["hf"].texts == outs["fast"].texts
    ro = outs["fast"]
    cases = [
        {
            "engine": name,
            "generate_s": statistics.median(times[name]),
            "prefill_tokens": statistics.mean(tokens[name]),
            "forwards": statistics.mean(forwards[name]),
        }
        for name in engines
    ]
    hf, fast = cases
    entry = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "episodes": len(rows),
        "model_turns_per_episode": statistics.mean(e.model_turns for e in ro.episodes),
        "tool_calls": sum(sum(e.calls.values()) for e in ro.episodes),
        "episode_tokens": int(ro.completion_mask.sum()),
        "model_tokens": int(ro.model_mask.sum()),
        "same_episodes": same,
        "engines": cases,
        "fast_speedup": hf["generate_s"] / fast["generate_s"],
        "prefill_tokens_saved": 1 - fast["prefill_tokens"] / hf["prefill_tokens"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(entry, indent=2))
    tag = "cuda" if args.device == "cuda" else "cpu"
    path = args.out or RESULTS / f"episodes_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["config"] != entry["config"]] + [entry]
    path.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
