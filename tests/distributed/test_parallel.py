"""Two gloo ranks on 127.0.0.1 against one process: the same global batch gives the same
parameters under DDP and FSDP2, with and without LoRA, for every loss aggregation; FSDP2
generation with different lengths per rank; checkpoints that resume across world sizes.

One ``torchrun`` launch (``worker.py``) runs every two-rank case, to pay its start-up once.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import Qwen2ForCausalLM

from reasonrl.algos.aggregate import AGGREGATIONS
from reasonrl.distributed import Ranks, load_train_state, save_train_state

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _load_worker() -> Any:
    spec = importlib.util.spec_from_file_location("distributed_worker", HERE / "worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env() -> dict[str, str]:
    """The environment for launched ranks: loopback only, one thread each, this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in worker_env_vars()}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def worker_env_vars() -> tuple[str, ...]:
    return ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    return subprocess.run(
        [*cmd, str(script), *args], env=local_env(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the worker on two ranks, after saving the one-process checkpoint they resume."""
    out = tmp_path_factory.mktemp("two-ranks")
    model = worker.tiny_model(lora=False)
    optimizer, _ = worker.train(model, Ranks(), "token_mean", steps=1)
    save_train_state(out / "one", model, optimizer)
    done = torchrun(HERE / "worker.py", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    results = torch.load(out / "results.pt", weights_only=False)
    results["out"] = out
    results["one-saved"] = worker.full_train_state(model, optimizer)
    return results


def assert_states_equal(got: dict, want: dict, tol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            assert_states_equal(got[key], value, tol)
        elif isinstance(value, torch.Tensor):
            assert torch.allclose(got[key].double(), value.double(), rtol=0, atol=tol), key
        else:
            assert got[key] == value, key


def test_torchrun_gives_each_process_its_rank(two_ranks: dict) -> None:
    assert two_ranks["ranks"] == [Ranks(0, 2, 0), Ranks(1, 2, 1)]
    assert two_ranks["broadcast"] == "from rank 0"
    assert two_ranks["sums"] == (3, 2.0) and type(two_ranks["sums"][0]) is int
    assert two_ranks["shards"] == [[0, 1, 2], [3, 4]]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
def test_two_ranks_train_like_one(two_ranks: dict, parallel: str, lora: bool, aggregation: str):
    params, norms = two_ranks["invariance"][(parallel, lora, aggregation)]
    model = worker.tiny_model(lora)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, want_norms = worker.train(model, Ranks(), aggregation)
    want = model.state_dict()
    assert params.keys() == want.keys()
    changed = 0
    for name, value in want.items():
        # 1e-10, not looser: AdamW is nearly blind to a gradient scale, so gradients averaged
        # over ranks instead of summed move the parameters by only ~1e-8 here.
        assert torch.allclose(params[name], value, rtol=0, atol=1e-10), name
        changed += not torch.equal(value, before[name])
    assert changed > 0  # the steps moved the (trainable) parameters
    # clip_grad_norm_ on FSDP2's sharded gradients gives the global norm, clipping is active
    assert norms == pytest.approx(want_norms, rel=1e-9)
    assert max(want_norms) > worker.CLIP


def test_generation_with_different_lengths_per_rank(two_ranks: dict) -> None:
    for rank, result in enumerate(two_ranks["generation"]):
        got, want = result["tokens"]
        assert got == want and len(got[0]) == 3 + 2 + 5 * rank
        assert result["logit_err"] < 1e-12
        assert result["resharded"]
    _, want = worker.train(worker.tiny_model(lora=False), Ranks(), "token_mean", steps=1)
    for result in two_ranks["generation"]:
        assert result["norms"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_rank_checkpoint_resumes_on_one(two_ranks: dict, parallel: str) -> None:
    model = worker.tiny_model(lora=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    load_train_state(two_ranks["out"] / f"two-{parallel}", model, optimizer)
    got = worker.full_train_state(model, optimizer)
    assert_states_equal(got, two_ranks["checkpoints"][f"saved-{parallel}"])
    assert got["optim"]["state"]  # AdamW moments were restored, not only the weights


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_one_process_checkpoint_resumes_on_two(two_ranks: dict, parallel: str) -> None:
    assert_states_equal(two_ranks["checkpoints"][f"loaded-{parallel}"], two_ranks["one-saved"])


@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_model_exports_with_save_pretrained(two_ranks: dict, lora: bool) -> None:
    """full_model_state gathers the shards for HF save_pretrained: a whole model, or the
    adapter alone, that loads in one process with the trained weights."""
    model = worker.tiny_model(lora)
    worker.train(model, Ranks(), "token_mean")
    saved = two_ranks["out"] / f"hf-lora-{lora}"
    if lora:
        assert (saved / "adapter_model.safetensors").is_file()
        loaded = PeftModel.from_pretrained(worker.tiny_model(lora=False), saved)
    else:
        loaded = Qwen2ForCausalLM.from_pretrained(saved, torch_dtype=torch.float64)
    assert_states_equal(loaded.state_dict(), model.state_dict(), tol=1e-10)
