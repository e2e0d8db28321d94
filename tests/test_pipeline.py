"""Multi-stage recipes: loading (defaults, @references, overrides, errors) and a tiny run."""

import json

import pytest
import yaml

from reasonrl.config import ConfigError
from reasonrl.pipeline import load_pipeline, run_pipeline

TINY_TASK = {
    "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "train_size": 200,
    "eval_size": 16,
}


def _recipe(tmp_path, stages, **top):
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"name": "pipe", **top, "stages": stages}))
    return path


def test_defaults_references_and_implicit_model_paths(tmp_path):
    recipe = _recipe(
        tmp_path,
        [
            {"name": "a", "stage": "sft", "sft": {"steps": 3}},
            {"name": "judge", "stage": "rm", "model": {"path": "@a"}},
            {
                "name": "b",
                "stage": "rl",
                "rewards": {"rm": {"verifier": "reward_model", "options": {"path": "@judge"}}},
            },
        ],
        seed=7,
        task=TINY_TASK,
    )
    a, judge, b = load_pipeline(recipe, [], tmp_path / "out")
    assert [s.dir.name for s in (a, judge, b)] == ["0-a", "1-judge", "2-b"]
    assert a.cfg.seed == b.cfg.seed == 7 and b.cfg.task.train_size == 200
    assert a.cfg.model.path == "bundled"  # the first stage keeps the default
    assert judge.cfg.model.path == str(tmp_path / "out" / "0-a" / "model")
    # b names no model: it starts from the last policy stage, a, not from the reward model
    assert b.cfg.model.path == str(tmp_path / "out" / "0-a" / "model")
    assert b.cfg.rewards["rm"].options["path"] == str(tmp_path / "out" / "1-judge" / "model")


def test_overrides_address_one_stage_or_all(tmp_path):
    recipe = _recipe(tmp_path, [{"name": "a", "stage": "sft"}, {"name": "b", "stage": "rl"}])
    a, b = load_pipeline(recipe, ["seed=3", "b.rl.steps=5"], tmp_path / "out")
    assert (a.cfg.seed, b.cfg.seed) == (3, 3)
    assert b.cfg.rl.steps == 5 and a.cfg.rl.steps != 5


@pytest.mark.parametrize(
    ("stages", "overrides", "message"),
    [
        ([{"name": "a", "stage": "rl", "rl": {"stepz": 3}}], [], "unknown key 'rl.stepz'"),
        (
            [{"name": "a"}, {"name": "b"}],
            ["b.rl.lerning_rate=1"],
            "did you mean 'rl.learning_rate'",
        ),
        (
            [{"name": "warmup"}, {"name": "general"}],
            ["genral.rl.steps=2"],
            "did you mean the stage 'general'",
        ),
        ([{"name": "a", "model": {"path": "@b"}}, {"name": "b"}], [], "'@b' is not an earlier"),
        ([{"name": "a"}, {"name": "a"}], [], "two stages are called 'a'"),
        ([{"stage": "rl"}], [], "stage 0 needs a 'name'"),
    ],
)
def test_bad_pipelines_fail_before_anything_runs(tmp_path, stages, overrides, message):
    recipe = _recipe(tmp_path, stages)
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(recipe, overrides, tmp_path / "out")
    if "unknown key" in message or "did you mean" in message:
        assert "stage '" in str(info.value)  # names the stage it is in
    assert not (tmp_path / "out").exists()


def test_two_stage_run_chains_models_and_resume_skips_finished_stages(tmp_path):
    tiny_eval = {"limit": 16, "k": 0, "sampling": {"max_new_tokens": 32}}
    recipe = _recipe(
        tmp_path,
        [
            {
                "name": "sft",
                "stage": "sft",
                "sft": {"steps": 2, "examples_per_step": 8, "micro_batch_examples": 8},
            },
            {
                "name": "rl",
                "stage": "rl",
                "rl": {
                    "steps": 2,
                    "prompts_per_step": 2,
                    "completions_per_prompt": 4,
                    "micro_batch_completions": 8,
                },
                "rollout": {"max_new_tokens": 32},
            },
        ],
        task=TINY_TASK,
        eval=tiny_eval,
        log={"tensorboard": False},
    )
    out = tmp_path / "out"
    summary = run_pipeline(recipe, [], out)
    sft, rl = summary["stages"]
    assert [sft["stage"], rl["stage"]] == ["sft", "rl"]
    assert (sft["steps"], rl["steps"]) == (2, 2)
    rl_config = yaml.safe_load((out / "1-rl" / "config.yaml").read_text())
    assert rl_config["model"]["path"] == str(out / "0-sft" / "model")
    # the RL stage starts from the SFT stage's model: its before-eval is the SFT after-eval
    assert rl["before"] == {k: sft["after"][k] for k in rl["before"]}
    assert json.loads((out / "summary.json").read_text())["stages"][1]["name"] == "rl"
    assert (out / "report.html").exists()

    with pytest.raises(ConfigError, match="already holds a pipeline run"):
        run_pipeline(recipe, [], out)
    first = (out / "0-sft" / "summary.json").stat().st_mtime_ns
    (out / "1-rl" / "summary.json").unlink()
    again = run_pipeline(recipe, [], out, resume=True)
    assert (out / "0-sft" / "summary.json").stat().st_mtime_ns == first
    assert again["stages"][1]["steps"] == 2


def test_every_stage_is_checked_before_the_first_one_starts(tmp_path):
    recipe = _recipe(
        tmp_path,
        [
            {"name": "a", "stage": "sft", "sft": {"steps": 1}},
            {"name": "b", "stage": "rl", "rewards": {"x": {"verifier": "no_such_module_xyz:f"}}},
        ],
        task=TINY_TASK,
        eval={"before": False, "after": False},
    )
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"^stage 'b': rewards\.x: cannot import verifier"):
        run_pipeline(recipe, [], out)
    assert not out.exists()  # stage a never ran, though b's model (a's) does not exist yet
