import json

import pytest

from reasonrl.config import ConfigError, TaskConfig
from reasonrl.tasks import Sample, load_splits, render_prompt
from reasonrl.tasks.sources import read_jsonl_samples, read_sft_pairs
from reasonrl.tasks.traces import chain_trace, round_to_ten, solution_text


def test_reasoning_gym_splits_are_disjoint_and_fixed_by_seed():
    cfg = TaskConfig(
        name="chain_sum", params={"min_digits": 1, "max_digits": 1}, train_size=300, eval_size=50
    )
    train, held_out = load_splits(cfg)
    assert len(held_out) == 50 and 0 < len(train) <= 300
    assert not {s.prompt for s in train} & {s.prompt for s in held_out}
    again, held_again = load_splits(cfg)
    assert [s.prompt for s in again] == [s.prompt for s in train]
    assert [s.prompt for s in held_again] == [s.prompt for s in held_out]
    other, _ = load_splits(cfg.model_copy(update={"split_seed": 99}))
    assert [s.prompt for s in other] != [s.prompt for s in train]


def test_unknown_reasoning_gym_task_is_a_config_error():
    with pytest.raises(ConfigError, match="no_such_task"):
        load_splits(TaskConfig(name="no_such_task"))


def test_jsonl_source(tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(
        '{"prompt": "1+1", "answer": 2, "level": 1}\n\n{"prompt": "2+2", "answer": "4"}\n'
    )
    held.write_text(
        json.dumps({"prompt": "1+1", "answer": "2"})
        + "\n"
        + json.dumps({"prompt": "3+3", "answer": "6"})
    )
    cfg = TaskConfig(source="jsonl", train_path=str(train), eval_path=str(held))
    tr, ho = load_splits(cfg)
    assert [s.prompt for s in tr] == ["2+2"]  # "1+1" is held out
    assert ho[1] == Sample("3+3", "6", {})


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match="missing.jsonl"):
        read_jsonl_samples(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        read_jsonl_samples(bad)
    bad.write_text('["prompt", "answer"]\n')  # JSON, but not an object
    with pytest.raises(ConfigError, match="bad.jsonl:1: need a JSON object"):
        read_jsonl_samples(bad)
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "p", "completion": "c"}\n')
    assert read_sft_pairs(sft)[0][1] == "c"


@pytest.mark.parametrize(
    ("expression", "steps", "result"),
    [
        ("4 - 1", ["4-1=3"], 3),
        ("57 + 87 - 70", ["57+87=144", "144-70=74"], 74),
        ("5 - 9 - 3", ["5-9=-4", "-4-3=-7"], -7),
    ],
)
def test_chain_trace(expression, steps, result):
    assert chain_trace(expression) == (steps, result)


def test_solution_text_and_bad_expression():
    s = Sample("q", "74", {"expression": "57 + 87 - 70"})
    assert solution_text(s) == "<think>57+87=144, 144-70=74</think> <answer>74</answer>"
    with pytest.raises(ValueError):
        chain_trace("3 * 4")
    assert solution_text(s, estimate=True) == "<think>~60+90-70=80</think> <answer>80</answer>"
    negative = Sample("q", "-20", {"expression": "-15 + 4 - 9"})
    hasty = "<think>~-20+0-10=-30</think> <answer>-30</answer>"
    assert solution_text(negative, estimate=True) == hasty


@pytest.mark.parametrize(
    ("value", "rounded"), [(0, 0), (4, 0), (5, 10), (14, 10), (95, 100), (-5, -10), (-14, -10)]
)
def test_round_to_ten(value, rounded):
    assert round_to_ten(value) == rounded


class _NoTemplate:
    chat_template = None


def test_prompt_without_chat_template_uses_the_r1_preamble():
    text = render_prompt(Sample("What is 2+2?", "4"), _NoTemplate())
    assert text.startswith("A conversation between User and Assistant")
    assert "<think>" in text and text.endswith("Assistant:")
    assert render_prompt(Sample("Q", "4"), _NoTemplate(), style="plain") == "User: Q\nAssistant:"
    with pytest.raises(ValueError):
        render_prompt(Sample("Q", "4"), _NoTemplate(), chat="on")


def test_humaneval_source_splits_by_seed():
    train, held_out = load_splits(TaskConfig(source="humaneval", eval_size=40))
    assert len(held_out) == 40 and len(train) == 124
    assert not {s.meta["task_id"] for s in train} & {s.meta["task_id"] for s in held_out}
    with pytest.raises(ConfigError, match="empty"):
        load_splits(TaskConfig(source="humaneval"))  # all 164 held out


def test_mix_tags_each_sample_and_interleaves_both_splits():
    chain = {"name": "chain_sum", "params": {"min_terms": 2, "max_terms": 2}, "train_size": 200}
    linear = {"source": "procedural", "name": "linear_function", "train_size": 100}
    cfg = TaskConfig(mix=[{**chain, "eval_size": 20}, {**linear, "eval_size": 10}])
    train, held_out = load_splits(cfg)
    held_tasks = [s.meta["task"] for s in held_out]
    assert held_tasks.count("chain_sum") == 20 and held_tasks.count("linear_function") == 10
    for n in (3, 10, 17):  # any first N problems (eval.limit) hold each task in its share
        assert abs(held_tasks[:n].count("linear_function") - n / 3) <= 1
    tasks = [s.meta["task"] for s in train]
    assert tasks.count("chain_sum") == 200 and tasks.count("linear_function") == 100
    assert "linear_function" in tasks[:50]  # shuffled, not one task after the other
    assert not {s.prompt for s in train} & {s.prompt for s in held_out}
    assert load_splits(cfg) == (train, held_out)


# --------------------------------------------------------------------------- datasets

GSM8K_ROWS = [
    {"question": f"Tom has {n} apples, buys {n} more. How many?", "answer": f"#### {2 * n:,}"}
    for n in range(600, 610)
]


def _parquet(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))


def test_dataset_source_reads_gsm8k_layout_parquet_splits(tmp_path):
    _parquet(tmp_path / "train.parquet", GSM8K_ROWS[:8])
    _parquet(tmp_path / "test.parquet", GSM8K_ROWS[6:])  # two also in train: they stay held out
    train, held_out = load_splits(TaskConfig(source="dataset", path=str(tmp_path)))
    assert [s.answer for s in held_out] == ["1212", "1214", "1216", "1218"]  # "#### 1,212"
    assert held_out[0] == Sample(GSM8K_ROWS[6]["question"], "1212", {})
    assert [s.answer for s in train] == [str(2 * n) for n in range(600, 606)]


def test_dataset_source_reads_math_solutions_and_counts_the_rows_it_drops(tmp_path, capsys):
    rows = [
        {"problem": f"{n}/2?", "solution": f"$\\boxed{{\\frac{{{n}}}{{2}}}}$", "level": "Level 1"}
        for n in range(1, 9)
    ]
    rows.append({"problem": "Prove it.", "solution": "By induction.", "level": "Level 5"})
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TaskConfig(source="dataset", path=str(path), eval_split=None, eval_size=3)
    train, held_out = load_splits(cfg)
    assert len(train) == 5 and len(held_out) == 3  # one split: held-out problems drawn from it
    assert {s.answer for s in train + held_out} == {f"\\frac{{{n}}}{{2}}" for n in range(1, 9)}
    assert train[0].meta == {"level": "Level 1"}
    err = capsys.readouterr().err
    assert err.count("rows dropped") == 1 and "1 of 9 rows dropped" in err and "boxed" in err


def test_dataset_source_maps_fields_and_reads_raw_answers_from_csv(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("q,a,topic\n2+2?,4,sums\n3+3?,6,sums\n5+1?,6,sums\n")
    cfg = TaskConfig(
        source="dataset",
        path=str(path),
        eval_split=None,
        eval_size=1,
        prompt_field="q",
        answer_field="a",
        answer_format="raw",
    )
    train, held_out = load_splits(cfg)
    assert sorted(s.prompt for s in train + held_out) == ["2+2?", "3+3?", "5+1?"]
    assert {s.answer for s in train + held_out} == {"4", "6"}
    with pytest.raises(ConfigError, match=r"no column 'question' \(task.prompt_field\)"):
        load_splits(cfg.model_copy(update={"prompt_field": "question"}))
    with pytest.raises(ConfigError, match="split 'test'"):  # a file's only split is train
        load_splits(cfg.model_copy(update={"eval_split": "test"}))


def test_an_empty_held_out_file_is_an_error_naming_it(tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text('{"prompt": "1+1", "answer": "2"}\n')
    held.write_text("")
    with pytest.raises(ConfigError, match=r"eval\.jsonl is empty"):
        load_splits(TaskConfig(source="jsonl", train_path=str(train), eval_path=str(held)))


def test_one_task_at_two_difficulties_is_a_mix_tagged_by_difficulty():
    easy = {"name": "chain_sum", "params": {"min_digits": 1, "max_digits": 2}, "eval_size": 10}
    hard = {"name": "chain_sum", "params": {"min_digits": 4, "max_digits": 6}, "eval_size": 10}
    cfg = TaskConfig(mix=[{**easy, "difficulty": "easy"}, {**hard, "difficulty": "hard"}])
    train, held_out = load_splits(cfg)
    for samples in (train, held_out):
        by = {d: [s for s in samples if s.meta["difficulty"] == d] for d in ("easy", "hard")}
        assert len(by["easy"]) == len(by["hard"]) == len(samples) // 2
        assert all(abs(int(s.answer)) < 1000 for s in by["easy"])
        assert all(len(s.meta["expression"].split()[0].lstrip("-")) >= 4 for s in by["hard"])
        assert {s.meta["task"] for s in samples} == {"chain_sum"}
    # without a label, reasoning-gym's own metadata stays (its ranges, not a label)
    assert not isinstance(
        load_splits(TaskConfig(**easy, train_size=20))[1][0].meta["difficulty"], str
    )
