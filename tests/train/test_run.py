"""End-to-end runs of the RL loop on the bundled model (CPU, seconds)."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from reasonrl.config import ConfigError, ModelConfig, load_config
from reasonrl.logging import read_jsonl
from reasonrl.models import load_model
from reasonrl.train.run import run

# A trivially learnable task: whatever the question, the answer is 1.
PROMPTS = [
    f"State the final answer to the following arithmetic problem: {a} - {b} ="
    for a in range(2, 9)
    for b in range(1, 8)
]


def _task(tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in PROMPTS[:40]))
    held.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in PROMPTS[40:]))
    return ["task.source=jsonl", f"task.train_path={train}", f"task.eval_path={held}"]


TINY = [
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=8",
    "rl.micro_batch_completions=16",
    "rollout.max_new_tokens=24",
    "eval.sampling.max_new_tokens=24",
    "log.samples_every=1",
]


STEPWISE = """
from reasonrl.rewards import RewardResult


def stepwise(completion, sample):
    # 1 for a careful trace ("a+b=c, c-d=e"), 0 for a hasty one ("~a+b-c=d")
    return RewardResult(1.0 if ", " in completion else 0.0, "ok")
"""


def test_end_to_end_run_learns_and_writes_every_artifact(tmp_path, monkeypatch):
    # Trivially learnable: on 3-term problems the bundled model works step by step about half
    # the time and estimates otherwise; a user verifier (by import path) pays for the steps.
    (tmp_path / "my_rewards.py").write_text(STEPWISE)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = TINY + [
        "task.params={min_terms: 3, max_terms: 3, min_digits: 1, max_digits: 2}",
        "task.train_size=400",
        "task.eval_size=16",
        "rl.steps=12",
        "rl.learning_rate=1e-3",
        "rl.warmup_steps=0",
        "rewards={steps: {verifier: 'my_rewards:stepwise'}}",
        "eval.k=2",
        "log.checkpoint_every=6",
    ]
    cfg = load_config("quickstart", overrides)
    run_dir = tmp_path / "run"
    summary = run(cfg, run_dir)

    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in m]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    first = sum(m["reward/mean"] for m in metrics[:3]) / 3
    last = sum(m["reward/mean"] for m in metrics[-3:]) / 3
    assert last > first + 0.2, (first, last)
    assert all(math.isfinite(m["loss/total"]) and m["kl/mean"] >= 0 for m in metrics)

    trained = load_model(ModelConfig(path=str(run_dir / "model"), device="cpu"))
    start = load_model(ModelConfig(path="bundled", device="cpu"))
    changed = [
        not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters(), strict=True)
    ]
    assert all(changed)

    assert 0 <= summary["after"]["accuracy"] <= 1 and summary["before"]["n"] == 16
    saved = json.loads((run_dir / "summary.json").read_text())
    assert {"accuracy", "n"} <= set(saved["before"]) and saved["wall_s"] > 0
    samples = read_jsonl(run_dir / "samples.jsonl")
    keys = {"step", "prompt", "completion", "gold_answer", "reward", "rewards", "tokens"}
    assert set(samples[0]) == keys | {"truncated"} and set(samples[0]["rewards"]) == {"steps"}
    assert (run_dir / "report.html").stat().st_size > 1000
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert load_config(run_dir / "config.yaml") == cfg
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-12", "step-6"]
    memory = saved["memory"]  # full fine-tuning: a frozen copy of the policy is the reference
    assert memory["reference_mib"] == memory["policy_mib"] > 1
    assert memory["optimizer_mib"] == 2 * memory["trainable_mib"] > 0
    assert memory["critic_mib"] == memory["reward_models_mib"] == 0
    assert memory["peak_cpu_mib"] > memory["policy_mib"] + memory["optimizer_mib"]
    peaks = [m["perf/peak_memory_mib"] for m in metrics]
    assert peaks == sorted(peaks) and peaks[-1] <= memory["peak_cpu_mib"]


def _cli(run_dir, overrides, *extra, python=("-m", "reasonrl")):
    cmd = [sys.executable, *python, "run", "quickstart", *overrides, "--out", str(run_dir), *extra]
    # SIGINT back to its default in the child: a pytest started in the background (`cmd &`)
    # passes it on ignored, and Python then never raises KeyboardInterrupt.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore
    )


def test_ctrl_c_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    overrides = (
        _task(tmp_path)
        + TINY
        + [
            "rl.steps=6",
            "eval.before=false",
            "eval.after=false",
            "log.checkpoint_every=0",
            "log.tensorboard=false",
        ]
    )
    # the uninterrupted run goes beside the interrupted one (each is mostly one busy thread)
    full = _cli(tmp_path / "full", overrides)
    part = _cli(tmp_path / "part", overrides)
    metrics = tmp_path / "part" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(read_jsonl(metrics)) >= 2):
        time.sleep(0.01)
    part.send_signal(signal.SIGINT)
    _, err = part.communicate(timeout=120)
    assert part.returncode == 130, err
    assert "--resume" in err
    done = len(read_jsonl(metrics))
    assert 2 <= done < 6
    resumed = _cli(tmp_path / "part", overrides, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert full.wait(timeout=300) == 0, full.stderr.read()

    a = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    b = read_jsonl(metrics)
    assert [m["step"] for m in b] == [m["step"] for m in a] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        for key in (
            "loss/total",
            "loss/policy",
            "reward/mean",
            "kl/mean",
            "response/length_mean",
            "optim/grad_norm",
        ):
            assert abs(x[key] - y[key]) <= 1e-6, (x["step"], key, x[key], y[key])


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    # interrupted in the first evaluation: no checkpoint exists, and the message must not say one
    # does; --resume then refuses instead of training from step 0 into the same metrics file
    overrides = ["eval.limit=300", "eval.k=0", "rl.steps=2", "log.tensorboard=false"]
    part = _cli(tmp_path / "part", overrides)
    for line in part.stdout:  # printed just before the evaluation of 300 problems
        if line.startswith("model:"):
            break
    part.send_signal(signal.SIGINT)
    _, err = part.communicate(timeout=120)
    assert part.returncode == 130, err
    assert "nothing to resume" in err and "progress saved" not in err
    resumed = _cli(tmp_path / "part", overrides, "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 2 and "no checkpoint to resume from" in " ".join(err.split())


# Runs the command line with a second Ctrl-C at each point of the first one's handling where it
# once did harm: while the checkpoint is written, on the way out, and while the message is made.
# (Sent by the process itself: from outside, no timing can be sure to land there.)
TWICE = """
import os, signal, sys
import reasonrl.logging as logs, reasonrl.train.checkpoint as ck
from reasonrl.cli import app

interrupted = []

def again(f, first=False):
    def wrapped(*args, **kwargs):
        if first:
            interrupted.append(True)
        if interrupted:
            os.kill(os.getpid(), signal.SIGINT)
        return f(*args, **kwargs)
    return wrapped

# log.checkpoint_every=0: the only checkpoint is the one written on the first Ctrl-C
ck.save_checkpoint = again(ck.save_checkpoint, first=True)
logs.RunLogger.close = again(logs.RunLogger.close)
ck.latest_checkpoint = again(ck.latest_checkpoint)
sys.argv[0] = "reasonrl"
app()
"""


def test_a_second_ctrl_c_while_the_first_is_handled_still_ends_130_with_a_checkpoint(tmp_path):
    overrides = _task(tmp_path) + TINY + ["rl.steps=1000", "log.checkpoint_every=0"]
    overrides += ["eval.before=false", "eval.after=false", "log.tensorboard=false"]
    part = _cli(tmp_path / "part", overrides, python=("-c", TWICE))
    metrics = tmp_path / "part" / "metrics.jsonl"
    while not (metrics.exists() and read_jsonl(metrics)):
        assert part.poll() is None, part.communicate()
        time.sleep(0.01)
    part.send_signal(signal.SIGINT)
    _, err = part.communicate(timeout=120)
    assert part.returncode == 130, err
    assert "progress saved" in err and "--resume" in err and "Traceback" not in err
    assert "already stopping" in err  # the repeat on the way out came, and was ignored
    checkpoints = tmp_path / "part" / "checkpoints"
    (saved,) = checkpoints.iterdir()  # whole, and no half-written temporary one beside it
    state = torch.load(saved / "trainer_state.pt", weights_only=False)
    assert saved.name == f"step-{state['step']}" and state["step"] == len(read_jsonl(metrics))
    load_model(ModelConfig(path=str(saved), device="cpu"))


def test_resume_without_a_checkpoint_refuses_instead_of_training_again(tmp_path):
    # metrics but no checkpoint (log.checkpoint_every=0): starting over would log steps 1, 2
    # a second time into the same metrics.jsonl
    overrides = _task(tmp_path) + TINY + ["rl.steps=2", "log.checkpoint_every=0"]
    overrides += ["eval.before=false", "eval.after=false", "log.tensorboard=false"]
    run(load_config("quickstart", overrides), tmp_path / "run")
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        run(load_config("quickstart", overrides), tmp_path / "run", resume=True)
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_resume_with_another_eval_limit_evaluates_the_start_again(tmp_path):
    # the saved "before" of 3 problems cannot be compared with an "after" of 5
    base = _task(tmp_path) + TINY + ["eval.k=0", "eval.after=false", "log.checkpoint_every=1"]
    run(load_config("quickstart", base + ["eval.limit=3", "rl.steps=1"]), tmp_path / "run")
    cfg = load_config("quickstart", base + ["eval.limit=5", "rl.steps=2"])
    run(cfg, tmp_path / "run", resume=True)
    before = json.loads((tmp_path / "run" / "eval_before.json").read_text())
    assert before["n"] == 5


def test_bad_references_fail_before_the_run_directory_or_any_evaluation(tmp_path):
    # a verifier that does not import used to fail only when training began, after the
    # "before" evaluation; an rm stage's missing pair file after its model had loaded
    overrides = _task(tmp_path) + TINY + ["eval.limit=2", "eval.k=0", "log.tensorboard=false"]
    bad_verifier = overrides + ["rewards={steps: {verifier: 'no_such_module_xyz:stepwise'}}"]
    with pytest.raises(ConfigError, match=r"^rewards\.steps: cannot import verifier"):
        run(load_config("quickstart", bad_verifier), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    pairs = ["rm.data.source=jsonl", f"rm.data.train_path={tmp_path / 'train.jsonl'}"]
    rm = ["stage=rm", *pairs, f"rm.data.eval_path={tmp_path / 'no-pairs.jsonl'}"]
    with pytest.raises(ConfigError, match=r"^rm\.data\.eval_path: preference file not found"):
        run(load_config("tiny-rm", rm), tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
