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


def test_an_override_for_every_stage_beats_what_a_stage_sets_itself(tmp_path):
    stages = [
        {"name": "cold", "stage": "sft", "sft": {"steps": 400}},
        {"name": "reasoning", "stage": "rl", "rl": {"steps": 60}},
        {"name": "general", "stage": "rl", "rl": {"steps": 60, "learning_rate": 5e-5}},
    ]
    recipe = _recipe(tmp_path, stages, sft={"steps": 9})
    overrides = ["rl.steps=2", "sft.steps=3", "general.rl.steps=5"]
    cold, reasoning, general = load_pipeline(recipe, overrides, tmp_path / "out")
    assert cold.cfg.sft.steps == 3
    assert reasoning.cfg.rl.steps == 2
    assert general.cfg.rl.steps == 5  # the stage named beats the override for all
    assert general.cfg.rl.learning_rate == 5e-5  # the rest of the stage's section stays


def test_an_override_for_every_stage_of_a_reward_only_some_stages_have_is_refused(tmp_path):
    judge = {"verifier": "reward_model", "options": {"path": "@a"}}
    stages = [
        {"name": "a", "stage": "sft"},
        {"name": "b", "stage": "rl", "rewards": {"correct": 1.0, "format": 0.1}},
        {"name": "c", "stage": "rl", "rewards": {"judge": judge, "format": 0.1}},
    ]
    recipe = _recipe(tmp_path, stages)
    # it would have made the reward model a reward of stage b as well
    with pytest.raises(ConfigError, match=r"only stage\(s\) \['c'\].*c\.rewards\.judge\.weight=2"):
        load_pipeline(recipe, ["rewards.judge.weight=2"], tmp_path / "out")
    _, b, c = load_pipeline(recipe, ["rewards.format=0.2", "c.rewards.judge.weight=2"], tmp_path)
    assert b.cfg.rewards["format"].weight == c.cfg.rewards["format"].weight == 0.2
    assert c.cfg.rewards["judge"].weight == 2 and "judge" not in b.cfg.rewards


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("out=runs/x", "pass --out DIR"),
        ("b.out=runs/x", "pass --out DIR"),
        ("name=other", "set 'name:' in the recipe"),
        ("a.name=other", "set 'name:' in the recipe"),
    ],
)
def test_overrides_of_the_pipelines_own_name_and_directory_are_refused(tmp_path, override, message):
    recipe = _recipe(tmp_path, [{"name": "a", "stage": "sft"}, {"name": "b", "stage": "rl"}])
    with pytest.raises(ConfigError, match=message) as e:
        load_pipeline(recipe, [override], tmp_path / "out")
    assert override in str(e.value)


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
        ([{"name": "a"}, {"name": "b", "out": "x"}], [], r"stage 'b' sets 'out'.*RUN_DIR/1-b"),
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
