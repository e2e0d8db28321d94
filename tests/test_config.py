import subprocess
import sys
import time

import pytest
import yaml

from reasonrl.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    bundled_recipes,
    dump_config,
    load_config,
    parse_override,
    validate_config,
)


def test_override_sets_nested_value_and_parses_scientific_floats():
    cfg = load_config(None, ["rl.learning_rate=5e-6", "seed=3", "task.params={min_terms: 2}"])
    assert cfg.rl.learning_rate == 5e-6
    assert cfg.seed == 3
    assert cfg.task.params == {"min_terms": 2}


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("a.b=1", ["a", "b"], 1),
        ("x=true", ["x"], True),
        ("y=.5", ["y"], 0.5),
        ("z=abc", ["z"], "abc"),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["rl.learning_rate"])


def test_unknown_override_key_names_full_path_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["rl.learning_rat=1e-5"])
    assert "rl.learning_rat" in str(e.value)
    assert "did you mean 'rl.learning_rate'" in str(e.value)


def test_a_misspelt_algorithm_is_one_line_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config("quickstart", ["algo.name=grpoo"])
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1  # not one "Field required" per key the preset would have filled
    assert "'grpoo'" in lines[0] and "did you mean 'grpo'?" in lines[0]


def test_unknown_key_in_recipe_file_names_path_and_suggestion(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rl:\n  completions_per_promt: 4\neval:\n  sampling:\n    temprature: 0.7\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe)
    msg = str(e.value)
    assert "rl.completions_per_promt" in msg and "rl.completions_per_prompt" in msg
    assert "eval.sampling.temprature" in msg and "eval.sampling.temperature" in msg
    assert str(recipe) in msg


def test_bad_value_is_reported_with_its_path():
    with pytest.raises(ConfigError, match="rl.steps"):
        load_config(None, ["rl.steps=-1"])


def test_micro_batch_must_divide_the_step():
    with pytest.raises(ConfigError, match="micro_batch_completions"):
        load_config(
            None,
            [
                "rl.prompts_per_step=3",
                "rl.completions_per_prompt=4",
                "rl.micro_batch_completions=8",
            ],
        )


def test_missing_recipe_names_the_path_and_a_bundled_neighbour():
    with pytest.raises(ConfigError) as e:
        load_config("quickstrat.yaml")
    assert "quickstrat.yaml" in str(e.value)
    assert "quickstart" in str(e.value)


def test_bundled_recipes_validate(tmp_path):
    from reasonrl.pipeline import is_pipeline, load_pipeline

    recipes = bundled_recipes()
    assert {"quickstart", "tiny-cold-start"} <= set(recipes)
    for name in recipes:
        if is_pipeline(name):
            assert all(isinstance(s.cfg, RunConfig) for s in load_pipeline(name, [], tmp_path))
        else:
            assert isinstance(load_config(name), RunConfig)


def test_derived_sizes_are_in_named_units():
    cfg = load_config(
        None,
        [
            "rl.prompts_per_step=4",
            "rl.completions_per_prompt=8",
            "rl.micro_batch_completions=16",
            "rl.steps=10",
        ],
    )
    assert cfg.derived_sizes() == {
        "completions_per_step": 32,
        "accumulation_steps": 2,
        "total_prompts": 40,
        "total_completions": 320,
    }


def test_dump_round_trips(tmp_path):
    cfg = load_config("quickstart", ["seed=7"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_config_module_does_not_import_torch():
    code = "import sys, reasonrl.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_typo_fails_fast_with_the_suggestion():
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "reasonrl", "run", "quickstart", "rl.learnin_rate=1e-5"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 2
    assert "rl.learnin_rate" in out.stderr and "rl.learning_rate" in out.stderr
    assert elapsed < 5, f"a typo took {elapsed:.1f}s to report"


def test_cli_missing_recipe_and_model_path_name_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "reasonrl", "run", str(missing)], capture_output=True, text=True
    )
    assert out.returncode == 2 and str(missing) in out.stderr
    model = tmp_path / "no-model"
    out = subprocess.run(
        [sys.executable, "-m", "reasonrl", "eval", "--model", str(model)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and str(model) in out.stderr.replace("\n", "")


def test_task_mix_errors_name_the_entry_and_the_misplaced_keys():
    mix = [{"name": "chain_sum"}, {"source": "procedural", "name": "linear_function"}]
    cfg = validate_config({"task": {"mix": mix, "prompt": "plain"}}, "test")
    assert [t.name for t in cfg.task.mix] == ["chain_sum", "linear_function"]
    assert validate_config(yaml.safe_load(dump_config(cfg)), "dump") == cfg
    with pytest.raises(
        ConfigError, match=r"task\.mix\.1\.nmae' — did you mean 'task\.mix\.1\.name"
    ):
        validate_config({"task": {"mix": [{"name": "chain_sum"}, {"nmae": "x"}]}}, "test")
    with pytest.raises(ConfigError, match=r"set \['train_size'\] inside its entries"):
        validate_config({"task": {"mix": mix, "train_size": 10}}, "test")
    with pytest.raises(ConfigError, match="names each task once per difficulty"):
        validate_config({"task": {"mix": [{"name": "chain_sum"}, {"name": "chain_sum"}]}}, "t")
    levels = [{"name": "chain_sum", "difficulty": "easy"}, {"name": "chain_sum", "difficulty": "x"}]
    assert validate_config({"task": {"mix": levels}}, "t").task.mix[1].difficulty == "x"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("task.chat_template=on", "on"),  # YAML 1.1 read on/off/yes/no as booleans
        ("task.chat_template=off", "off"),
        ("x=no", "no"),
        ("x=0755", "0755"),  # YAML 1.1's octal 493
        ("x=2024-01-02", "2024-01-02"),  # YAML 1.1's date
        ("x=1:30", "1:30"),  # YAML 1.1's sexagesimal 90
        ("x=1e-5", 1e-5),
        ("x=0x1f", 31),
        ("x=false", False),
    ],
)
def test_override_values_are_read_as_yaml_1_2(text, value):
    parsed = parse_override(text)[1]
    assert parsed == value and type(parsed) is type(value)


def test_documented_chat_template_values_load_from_overrides_and_recipes(tmp_path):
    for value in ("auto", "on", "off"):
        assert load_config(None, [f"task.chat_template={value}"]).task.chat_template == value
        recipe = tmp_path / f"{value}.yaml"
        recipe.write_text(f"task:\n  chat_template: {value}\n")
        assert load_config(recipe).task.chat_template == value


def test_a_key_given_twice_in_a_recipe_is_an_error_naming_it_and_its_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rl:\n  steps: 400\n  learning_rate: 1e-5\n  steps: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe)
    assert str(e.value) == f"{recipe}:4: invalid YAML: duplicate key 'steps'"


def test_invalid_yaml_is_one_line_with_file_and_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 1\nrl:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe)
    assert str(e.value).startswith(f"{recipe}:4: invalid YAML: ") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'task\.params=\{a: 1': the value is not valid"):
        load_config(None, ["task.params={a: 1"])


def test_config_yaml_quotes_strings_that_yaml_would_read_as_something_else(tmp_path):
    params = "{label: on, x: 1e-5, mode: '0755', day: 2024-01-02, t: 1:30}"
    cfg = load_config(None, ["task.chat_template=off", f"task.params={params}"])
    assert cfg.task.params == {
        "label": "on",
        "x": 1e-5,
        "mode": "0755",
        "day": "2024-01-02",
        "t": "1:30",
    }
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    # and a YAML 1.1 reader (PyYAML's safe_load) reads back the same values
    assert validate_config(yaml.safe_load(path.read_text()), "1.1") == cfg


def test_an_override_addresses_an_item_of_a_list_by_its_number():
    recipe = {"task": {"mix": [{"name": "chain_sum", "train_size": 40}, {"name": "products"}]}}
    data = apply_overrides(recipe, ["task.mix.1.train_size=5", "task.mix.0.name=basic_arithmetic"])
    assert data["task"]["mix"] == [
        {"name": "basic_arithmetic", "train_size": 40},
        {"name": "products", "train_size": 5},
    ]
    assert recipe["task"]["mix"][1] == {"name": "products"}  # the recipe itself is untouched
    for bad in ["task.mix.2.train_size=5", "task.mix.train_size=5"]:
        with pytest.raises(ConfigError, match=r"task\.mix is a list of 2 item\(s\)"):
            apply_overrides(recipe, [bad])


def test_report_to_names_the_trackers_and_log_tensorboard_still_works():
    assert load_config(None, []).log.report_to == ["tensorboard"]
    assert load_config(None, ["log.report_to=[wandb,trackio]"]).log.report_to == [
        "wandb",
        "trackio",
    ]
    assert load_config(None, ["log.report_to=wandb"]).log.report_to == ["wandb"]
    assert load_config(None, ["log.report_to=none"]).log.report_to == []
    # the key before report_to: false drops TensorBoard, true adds it to the others
    assert load_config(None, ["log.tensorboard=false"]).log.report_to == []
    both = load_config(None, ["log.report_to=[wandb]", "log.tensorboard=true"])
    assert both.log.report_to == ["wandb", "tensorboard"]
    assert "tensorboard:" not in dump_config(both)  # saved configs use the new key alone
    with pytest.raises(ConfigError, match=r"log.report_to.0: Input should be 'tensorboard'"):
        load_config(None, ["log.report_to=[wandbb]"])
    with pytest.raises(ConfigError, match="tensorboard is true or false"):
        load_config(None, ["log.tensorboard=5"])


def test_derived_sizes_show_each_ranks_share():
    cfg = load_config(None, ["stage=sft", "sft.examples_per_step=8", "sft.micro_batch_examples=2"])
    sizes = cfg.derived_sizes(world_size=2)
    assert sizes["world_size"] == 2
    assert sizes["examples_per_step_per_rank"] == 4
    assert sizes["accumulation_steps"] == 2
    assert "world_size" not in cfg.derived_sizes()
    assert cfg.train.parallel == "ddp"


def test_rewards_workers_is_kept_in_distributed_and_reads_back(tmp_path):
    cfg = load_config("quickstart", ["distributed.backend=ray", "rewards.workers=3"])
    assert cfg.distributed.reward_workers == 3 and "workers" not in cfg.rewards
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.workers=2", "rollout.workers=2"),
        ("rewards.workers=2", "rewards.workers=2"),
        ("rollout.async_steps=1", "rollout.async_steps=1"),
        ("distributed.weight_sync=collective", "distributed.weight_sync=collective"),
        ("distributed.worker_gpus=0.5", "distributed.worker_gpus=0.5"),
    ],
)
def test_ray_sizes_without_the_ray_backend_name_the_key_to_add(override, key):
    with pytest.raises(
        ConfigError, match=f"{key} runs on Ray workers: add distributed.backend=ray"
    ):
        load_config("quickstart", [override])


def test_the_vllm_engine_runs_on_rays_workers_but_not_with_a_server():
    cfg = load_config("quickstart", ["distributed.backend=ray", "rollout.engine=vllm"])
    assert (cfg.distributed.backend, cfg.rollout.engine) == ("ray", "vllm")
    server = ["rollout.engine=vllm", "rollout.vllm.url=http://127.0.0.1:8000"]
    assert load_config("quickstart", server).rollout.vllm.url == "http://127.0.0.1:8000"
    with pytest.raises(ConfigError, match="rollout.vllm.url sends the trainer's weights"):
        load_config("quickstart", [*server, "distributed.backend=ray"])


def test_tis_corrects_any_engine_and_its_mode_is_checked_by_name():
    cfg = load_config("quickstart", ["algo.tis_cap=2", "algo.tis_mode=sequence_mask"])
    assert (cfg.algo.tis_cap, cfg.algo.tis_mode) == (2.0, "sequence_mask")
    assert load_config("quickstart").algo.tis_mode == "token_truncate"
    with pytest.raises(ConfigError, match=r"algo\.tis_mode"):
        load_config("quickstart", ["algo.tis_cap=2", "algo.tis_mode=token"])
