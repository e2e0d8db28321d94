"""Where a tool-using model calls: on the problems it would get wrong by hand, or everywhere?

    reasonrl run tool-use --out runs/tool-use
    PYTHONPATH=. OMP_NUM_THREADS=2 python bench/tool_when.py runs/tool-use/2-mix/model \
        runs/tool-use/4-settle/model           # → bench/results/tool_when_cpu.json

On every held-out problem of the tool-use recipe, greedy episodes with its calculator: whether
BEFORE (the model before RL) answers it right by hand (without a call), and whether AFTER (the
model after RL) calls the calculator and answers right. Per difficulty, AFTER's call rate on the
problems BEFORE got right by hand and on those it got wrong: a model that learnt when a call
pays calls on the second far more than on the first.

bench/results/tool_when_cpu.json is the previous recipe's run (its ``mix`` stage 30% calling on
both difficulties, 0.8 a call), whose model before RL added every problem by hand. The current
recipe's model before RL calls on every easy problem, so it has no by-hand answers to compare;
its before/after figures are in docs/tools.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from reasonrl.config import ModelConfig
from reasonrl.envs import ToolUse
from reasonrl.models import load_model, load_tokenizer
from reasonrl.pipeline import load_pipeline
from reasonrl.rewards.extract import extract_answer
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits

RESULTS = Path(__file__).parent / "results"


def greedy(path: str, samples: list, cfg: Any) -> tuple[list[bool], list[bool]]:
    """Each problem: answered right, and called a tool (greedy episodes with the recipe's
    tools)."""
    tok = load_tokenizer(path)
    model = load_model(ModelConfig(path=path, device="cpu"))
    use = ToolUse.from_config(cfg.rollout)
    prompts, kwargs = use.generate_args(samples, tok, cfg.task)
    ro = HFEngine(model, tok).generate(
        prompts, max_new_tokens=cfg.rollout.max_new_tokens, greedy=True, **kwargs
    )
    right = [extract_answer(t) == s.answer for t, s in zip(ro.texts, samples, strict=True)]
    return right, [bool(e.calls) for e in ro.episodes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the model before RL (the recipe's mix stage)")
    parser.add_argument("after", help="the model after RL (or bundled-tool-use)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tool_when_cpu.json")
    args = parser.parse_args()
    cfg = load_pipeline("tool-use", [], Path("runs/tool-use"))[-1].cfg
    _, held = load_splits(cfg.task)
    result: dict[str, Any] = {"before": args.before, "after": args.after}
    result["machine"] = platform.node()
    for difficulty in ("easy", "hard"):
        samples = [s for s in held if s.meta["difficulty"] == difficulty]
        before_right, before_calls = greedy(args.before, samples, cfg)
        by_hand = [ok and not c for ok, c in zip(before_right, before_calls, strict=True)]
        right, calls = greedy(args.after, samples, cfg)
        rows = {}
        for name, wanted in (("right_by_hand", True), ("wrong_by_hand", False)):
            picked = [i for i, ok in enumerate(by_hand) if ok is wanted]
            rows[name] = {
                "problems": len(picked),
                "after_calls": sum(calls[i] for i in picked),
                "after_right": sum(right[i] for i in picked),
            }
        result[difficulty] = rows
        print(difficulty, json.dumps(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
