import math
from dataclasses import replace

from reasonrl.config import EvalConfig, ModelConfig, SamplingConfig
from reasonrl.eval import evaluate
from reasonrl.eval.evaluate import _evaluate_shard
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rollout import HFEngine
from reasonrl.tasks import Sample, render_prompt


def test_scorers_score_the_greedy_completions():
    tok = load_tokenizer("bundled")
    engine = HFEngine(load_model(ModelConfig(device="cpu")), tok)
    samples = [Sample(f"{a} + {b} =", str(a + b), {}) for a, b in [(1, 2), (30, 4), (7, 7)]]
    prompts = [render_prompt(s, tok) for s in samples]
    cfg = EvalConfig(k=0, sampling=SamplingConfig(max_new_tokens=24))
    seen = {}

    def length(texts, got_samples):
        seen["texts"], seen["samples"] = list(texts), list(got_samples)
        return [float(len(t)) for t in texts]

    result = evaluate(engine, prompts, samples, cfg, {"length": length})
    greedy = engine.generate(prompts, max_new_tokens=24, greedy=True).texts
    assert seen == {"texts": greedy, "samples": samples}
    lengths = [len(t) for t in greedy]
    score = result["scores"]["length"]
    assert math.isclose(score["mean"], sum(lengths) / 3)
    assert score["ci_low"] <= score["mean"] <= score["ci_high"]
    assert score["values"] == [float(n) for n in lengths]  # per problem, for paired changes
    assert "scores" not in evaluate(engine, prompts, samples, cfg)


def test_a_task_mix_is_also_reported_per_task():
    tok = load_tokenizer("bundled")
    engine = HFEngine(load_model(ModelConfig(device="cpu")), tok)
    pairs = [(1, 2), (30, 4), (7, 7), (12, 9), (40, 40)]
    samples = [
        Sample(f"{a} + {b} =", str(a + b), {"task": "easy" if i % 2 else "hard"})
        for i, (a, b) in enumerate(pairs)
    ]
    prompts = [render_prompt(s, tok) for s in samples]
    cfg = EvalConfig(k=4, sampling=SamplingConfig(max_new_tokens=24))
    result = evaluate(engine, prompts, samples, cfg, {"one": lambda texts, _: [1.0] * len(texts)})
    tasks = result["tasks"]
    assert tasks["easy"]["scores"]["one"]["mean"] == tasks["hard"]["scores"]["one"]["mean"] == 1
    assert {t: r["n"] for t, r in tasks.items()} == {"hard": 3, "easy": 2}
    weighted = sum(r["accuracy"] * r["n"] for r in tasks.values()) / 5
    assert math.isclose(weighted, result["accuracy"])
    assert set(tasks["easy"]["pass_at_k"]) == {"1", "4"}
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in tasks.values())
    one_task = [Sample(s.prompt, s.answer, {}) for s in samples]
    assert "tasks" not in evaluate(engine, prompts, one_task, cfg.model_copy(update={"k": 0}))


def test_pass_at_k_of_a_problem_does_not_depend_on_the_problems_beside_it():
    # Per-problem seeds: the samples of problem i are the same whether it is evaluated with
    # the others (one process) or in another block (a rank's shard of the problems).
    tok = load_tokenizer("bundled")
    engine = HFEngine(load_model(ModelConfig(device="cpu")), tok)
    samples = [Sample(f"{a} + {b} =", str(a + b), {}) for a, b in [(1, 2), (30, 4), (7, 7)]]
    prompts = [render_prompt(s, tok) for s in samples]
    cfg = EvalConfig(k=4, sampling=SamplingConfig(max_new_tokens=24))
    drawn = []
    generate = engine.generate

    def recording(prompts, **kw):
        out = generate(prompts, **kw)
        if kw.get("seeds") is not None:
            drawn.append(out.texts)
        return out

    engine.generate = recording
    whole = evaluate(engine, prompts, samples, cfg, seed=3)
    _evaluate_shard(engine, prompts, samples, cfg, {}, 3, range(1, 3))  # rank 1 of 2's block
    evaluate(engine, prompts, samples, cfg, seed=4)
    texts, block, other_seed = drawn
    assert len(texts) == 12 and block == texts[4:]
    assert other_seed != texts  # the run's seed changes the draws
    assert whole == evaluate(engine, prompts, samples, cfg, seed=3)


def test_episodes_with_tools_report_calls_per_difficulty(tool_model, tool_scripts):
    from reasonrl.envs import ToolUse, calculator

    tok = load_tokenizer(str(tool_model))
    engine = HFEngine(load_model(ModelConfig(path=str(tool_model), device="cpu")), tok)
    # the model calls the calculator on the first and answers the second by hand
    labels = {"What is 12 + 30?": ("42", "hard"), "What is 2 + 5?": ("7", "easy")}
    samples = [Sample(q, a, {"difficulty": d}) for q, (a, d) in labels.items()]
    prompts = [render_prompt(s, tok) for s in samples]
    cfg = EvalConfig(k=2, sampling=SamplingConfig(max_new_tokens=90))
    tools = ToolUse([calculator], None, 512, max_turns=3)
    result = evaluate(engine, prompts, samples, cfg, tools=tools)
    assert result["accuracy"] == 1.0 and result["tool_calls_per_episode"] == 0.5
    assert result["examples"][0]["completion"] == tool_scripts["What is 12 + 30?"]
    tasks = result["tasks"]
    assert {d: r["tool_calls_per_episode"] for d, r in tasks.items()} == {"hard": 1, "easy": 0}
    assert tasks["hard"]["pass_at_k"]["2"] == 1.0
    assert {d: r["sampled_tool_calls_per_episode"] for d, r in tasks.items()} == {
        "hard": 1,
        "easy": 0,
    }
    # one turn: no tool loop (this model then writes the result itself)
    single = evaluate(engine, prompts, samples, cfg, tools=replace(tools, max_turns=1))
    assert (
        "tool_calls_per_episode" not in single
        and "tool_calls_per_episode" not in single["tasks"]["hard"]
    )


def test_episodes_are_prompted_as_training_prompts_them(tool_model):
    """With tools, an evaluation renders each episode's prompt from the task (the
    environment's reset text appended), as collect() does, and gives each its own
    environment: not the single-turn prompts it was handed."""
    from reasonrl.config import TaskConfig
    from reasonrl.envs import ToolUse, calculator

    class Hinted:
        resets: list[str] = []

        def reset(self, sample: Sample) -> str:
            Hinted.resets.append(sample.prompt)
            return " Use the calculator."

    class Spy(HFEngine):
        def generate(self, prompts, **kwargs):
            seen.append(list(prompts))
            return super().generate(prompts, **kwargs)

    seen: list[list[str]] = []
    tok = load_tokenizer(str(tool_model))
    engine = Spy(load_model(ModelConfig(path=str(tool_model), device="cpu")), tok)
    samples = [Sample("What is 12 + 30?", "42"), Sample("What is 2 + 5?", "7")]
    task = TaskConfig()
    plain = [render_prompt(s, tok, task.prompt, task.chat_template) for s in samples]
    cfg = EvalConfig(k=1, sampling=SamplingConfig(max_new_tokens=60))
    evaluate(
        engine,
        plain,
        samples,
        cfg,
        tools=ToolUse([calculator], Hinted, 512, max_turns=3),
        task=task,
    )
    greedy, sampled = seen[0], seen[-1]
    assert Hinted.resets == [s.prompt for s in samples] * 2  # greedy, then the k samples
    for got, want in zip(greedy + sampled, plain * 2, strict=True):
        assert got != want and "Use the calculator." in got
