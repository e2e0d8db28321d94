import pytest

from reasonrl.config import ConfigError
from reasonrl.tasks.files import jsonl_rows, open_dataset
from reasonrl.tasks.preferences import read_preference_jsonl
from reasonrl.tasks.sources import read_jsonl_samples, read_sft_pairs


def test_a_line_that_is_not_utf8_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    row = b'{"prompt": "a", "answer": "1", "completion": "1", "chosen": "1", "rejected": "2"}\n'
    path.write_bytes(row + b"\n" + row.replace(b'"a"', b'"caf\xe9"'))
    readers = (read_jsonl_samples, read_sft_pairs, lambda p: read_preference_jsonl(p, None))
    for read in readers:
        with pytest.raises(ConfigError, match=r"latin1\.jsonl:3: not UTF-8.*save it as UTF-8"):
            read(path)


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"task file .*empty\.jsonl is empty"):
        read_jsonl_samples(path)
    with pytest.raises(ConfigError, match=r"preference file .*empty\.jsonl is empty"):
        read_preference_jsonl(path, None)


def test_rows_come_with_their_line_numbers_and_bad_json_is_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    rows = jsonl_rows(path, "data file")
    assert [next(rows), next(rows)] == [(1, {"a": 1}), (3, {"a": 2})]
    with pytest.raises(ConfigError, match=r"rows\.jsonl:4: not JSON"):
        next(rows)


def test_a_missing_local_dataset_is_named_without_asking_the_hub(tmp_path):
    with pytest.raises(ConfigError, match="dataset not found: .*nowhere"):
        open_dataset(str(tmp_path / "nowhere"), "train")
