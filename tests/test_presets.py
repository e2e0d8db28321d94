import dataclasses
import re
from pathlib import Path

import pytest

from reasonrl.algos import ADVANTAGES, AGGREGATIONS, IMPORTANCE_RATIOS, KL_ESTIMATORS
from reasonrl.presets import ALGORITHM_DEFAULTS, AlgorithmDefaults

DOC = Path(__file__).parents[1] / "docs" / "algorithms.md"


def _cell(text: str) -> object:
    """A table cell as the value it shows: — → None, yes/no → bool, numbers, else the text."""
    if text == "—":
        return None
    if text in ("yes", "no"):
        return text == "yes"
    if arxiv := re.search(r"\(arXiv (\d{4}\.\d{4,5})\)$", text):
        return arxiv.group(1)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _doc_table() -> dict[str, dict[str, object]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in DOC.read_text().splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    header, body = rows[0], rows[1:]
    return {row[0]: {k: _cell(v) for k, v in zip(header[1:], row[1:], strict=True)} for row in body}


def test_the_doc_table_and_the_presets_agree():
    table = _doc_table()
    assert list(table) == list(ALGORITHM_DEFAULTS)
    for name, defaults in ALGORITHM_DEFAULTS.items():
        assert table[name] == dataclasses.asdict(defaults), name


@pytest.mark.parametrize("name", list(ALGORITHM_DEFAULTS))
def test_presets_name_existing_functions(name):
    d: AlgorithmDefaults = ALGORITHM_DEFAULTS[name]
    assert d.advantage in ADVANTAGES
    assert d.ratio in IMPORTANCE_RATIOS
    assert d.aggregation in AGGREGATIONS
    assert (d.kl is None) == (d.kl_in is None) == (d.beta == 0)
    assert d.kl is None or d.kl in KL_ESTIMATORS
    assert d.kl_in in (None, "loss", "reward")
    assert 0 < d.clip_eps_low <= d.clip_eps_high
    assert (d.value_clip is None) == (d.advantage != "gae")
