"""The check phase: each kind of reference a recipe makes fails with its key, cheaply."""

import pytest

from reasonrl.checks import check_config
from reasonrl.config import ConfigError, validate_config

ROW = b'{"prompt": "1+1", "answer": "2", "completion": "2"}\n'
BROKEN = ROW + ROW.replace(b"1+1", b"\xff")


def _cfg(**data):
    return validate_config(data, "test")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.jsonl").write_bytes(ROW)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin1.jsonl").write_bytes(BROKEN)
    return tmp_path


def _jsonl_task(files, train="ok.jsonl", held_out="ok.jsonl"):
    return {"source": "jsonl", "train_path": str(files / train), "eval_path": str(files / held_out)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"path": "./no/model"}}, r"^model\.path: model path not found"),
        (
            {"rewards": {"steps": {"verifier": "no_such_module_xyz:fn"}}},
            r"^rewards\.steps: cannot import verifier 'no_such_module_xyz:fn'",
        ),
        ({"rewards": {"answr": 1.0}}, r"^rewards\.answr: unknown verifier 'answr'"),
        ({"rewards": {"answer": {"options": {"strict": True}}}}, r"^rewards\.answer: verifier"),
        (
            {"rewards": {"rm": {"verifier": "reward_model", "options": {"path": "/no/rm"}}}},
            r"^rewards\.rm\.options\.path: model path not found: /no/rm",
        ),
        ({"algo": {"name": "ppo", "critic_path": "/no/critic"}}, r"^algo\.critic_path: "),
        (
            {"algo": {"advantage": "no_such_module_xyz:fn"}},
            r"^algo\.advantage: cannot import advantage 'no_such_module_xyz:fn'",
        ),
        ({"task": {"source": "dataset", "path": "./no/data"}}, r"^task\.path: dataset not found"),
    ],
)
def test_each_reference_is_checked_and_named_by_its_key(data, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_cfg(**data))


def test_data_files_of_the_task_and_the_stage_are_read(files):
    with pytest.raises(ConfigError, match=r"^task\.eval_path: task file .*empty\.jsonl is empty"):
        check_config(_cfg(task=_jsonl_task(files, held_out="empty.jsonl")))
    mix = {"mix": [{"name": "a"}, {"name": "b", **_jsonl_task(files, train="latin1.jsonl")}]}
    with pytest.raises(ConfigError, match=r"^task\.mix\.1\.train_path: .*latin1\.jsonl:2: not UTF"):
        check_config(_cfg(task=mix))
    sft = {"data": "jsonl", "train_path": str(files / "latin1.jsonl")}
    with pytest.raises(ConfigError, match=r"^sft\.train_path: .*latin1\.jsonl:2"):
        check_config(_cfg(stage="sft", sft=sft))
    with pytest.raises(ConfigError, match="sft.data=jsonl needs sft.train_path"):
        check_config(_cfg(stage="sft", sft={"data": "jsonl"}))
    pairs = {"source": "jsonl", "train_path": str(files / "ok.jsonl"), "eval_path": "/no/pairs"}
    with pytest.raises(ConfigError, match=r"^rm\.data\.eval_path: preference file not found"):
        check_config(_cfg(stage="rm", rm={"data": pairs}))
    check_config(_cfg(task=_jsonl_task(files)))  # all well: nothing raised


def test_models_that_earlier_stages_will_write_are_not_checked_yet(tmp_path):
    later = tmp_path / "0-rm" / "model"
    rewards = {"rm": {"verifier": "reward_model", "options": {"path": str(later)}}}
    check_config(_cfg(model={"path": str(later)}, rewards=rewards), produced={later})
    with pytest.raises(ConfigError, match="0-rm"):
        check_config(_cfg(rewards=rewards))
