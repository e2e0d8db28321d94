import json
import random
import re

import pytest

from reasonrl.config import ConfigError, PreferenceDataConfig
from reasonrl.models import load_tokenizer
from reasonrl.tasks import Sample
from reasonrl.tasks.preferences import (
    PreferencePair,
    encode_pairs,
    generated_pairs,
    load_preference_pairs,
    pair_from_row,
    parse_hh_conversation,
    rejected_response,
)
from reasonrl.tasks.traces import chain_trace, solution_text


class _CharTokenizer:
    """One id per character; EOS is 0."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(ch) for ch in t] for t in texts]}


def test_encode_pairs_appends_eos_and_keeps_short_pairs_whole():
    (pair,), truncated = encode_pairs([PreferencePair("ab", "c", "de")], _CharTokenizer(), 10)
    assert (pair.prompt, pair.chosen, pair.rejected) == ([97, 98], [99, 0], [100, 101, 0])
    assert truncated == 0


def test_encode_pairs_cuts_the_prompt_from_the_left_and_counts_it():
    pairs = [PreferencePair("abcdef", "x", "yz"), PreferencePair("a", "b", "c")]
    (long, short), truncated = encode_pairs(pairs, _CharTokenizer(), 5)
    # the longer response (yz + EOS) leaves room for 2 prompt tokens: both keep the same 2
    assert long.prompt == [ord("e"), ord("f")]
    assert long.rejected == [ord("y"), ord("z"), 0]
    assert short.prompt == [ord("a")]
    assert truncated == 1


def test_encode_pairs_cuts_an_overlong_response_from_the_right():
    (pair,), truncated = encode_pairs([PreferencePair("p", "abcdef", "g")], _CharTokenizer(), 3)
    assert pair.prompt == [] and pair.chosen == [97, 98, 99]
    assert truncated == 1


# --------------------------------------------------------------------------- generated pairs


def _sample(expression: str) -> Sample:
    return Sample(f"{expression} =", str(chain_trace(expression)[1]), {"expression": expression})


SAMPLES = [_sample(f"{a} + {b} - {c}") for a in (7, 23, 58) for b in (4, 31, 96) for c in (2, 65)]
ANSWER = re.compile(r"<answer>(-?\d+)</answer>")


def _answer(text: str) -> int | None:
    found = ANSWER.search(text)
    return int(found.group(1)) if found else None


def test_slip_is_one_wrong_step_carried_to_a_wrong_answer():
    sample = _sample("57 + 87 - 70")
    for seed in range(20):
        text = rejected_response(sample, "slip", random.Random(seed))
        steps = re.findall(r"(-?\d+)([+-])(\d+)=(-?\d+)", text)
        assert len(steps) == 2
        wrong = [int(a) + (int(b) if op == "+" else -int(b)) != int(c) for a, op, b, c in steps]
        assert sum(wrong) == 1
        assert steps[1][0] == steps[0][3]  # the next step starts from the slipped total
        assert _answer(text) == int(steps[1][3]) != 74


@pytest.mark.parametrize("seed", range(5))
def test_mismatch_keeps_the_chain_but_not_its_answer(seed):
    text = rejected_response(_sample("57 + 87 - 70"), "mismatch", random.Random(seed))
    assert text.startswith("<think>57+87=144, 144-70=74</think> <answer>")
    assert _answer(text) != 74


def test_malformed_lacks_a_tag_and_estimate_is_the_hasty_trace():
    sample = _sample("57 + 87 - 70")
    rng = random.Random(0)
    seen = {rejected_response(sample, "malformed", rng) for _ in range(20)}
    assert seen == {"<think>57+87=144, 144-70=74</think> 74", "<answer>74</answer>"}
    assert rejected_response(sample, "estimate", rng) == solution_text(sample, estimate=True)
    with pytest.raises(ValueError, match="unknown rejection kind"):
        rejected_response(sample, "typo", rng)


def test_generated_pairs_prefer_the_careful_correct_trace():
    pairs = generated_pairs(SAMPLES * 10, lambda s: f"<{s.prompt}>", seed=3)
    assert pairs == generated_pairs(SAMPLES * 10, lambda s: f"<{s.prompt}>", seed=3)
    assert pairs != generated_pairs(SAMPLES * 10, lambda s: f"<{s.prompt}>", seed=4)
    kinds = set()
    for pair, sample in zip(pairs, SAMPLES * 10, strict=True):
        assert pair.prompt == f"<{sample.prompt}>"
        assert pair.chosen == solution_text(sample)
        rejected = pair.rejected
        if "~" in rejected:
            kind = "estimate"
        elif "<think>" not in rejected or "<answer>" not in rejected:
            kind = "malformed"
        elif rejected.startswith(pair.chosen.split("</think>")[0]):
            kind = "mismatch"
        else:
            kind = "slip"
        assert pair.kind == kind  # the label the pair carries is what the text shows
        kinds.add(kind)
        if "<answer>" in rejected and "<think>" in rejected:
            assert _answer(rejected) != int(sample.answer)
    assert kinds == {"estimate", "slip", "mismatch", "malformed"}


def test_the_estimate_is_never_rejected_where_it_is_right():
    right = _sample("20 + 30 - 10")  # rounding changes nothing: the hasty trace is correct
    pairs = generated_pairs([right] * 100, str, seed=0)
    assert not any("~" in p.rejected for p in pairs)


def test_generated_pairs_need_chain_sum_samples_and_pass_over_the_rest_of_a_mix():
    with pytest.raises(ConfigError, match="expression"):
        generated_pairs([Sample("q", "1")], str, seed=0)
    chain = _sample("12 + 30")
    pairs = generated_pairs([Sample("q", "1"), chain, Sample("r", "2")], str, seed=0)
    assert [p.prompt for p in pairs] == [str(chain)]


# --------------------------------------------------------------------------- real data


def test_hh_conversation_parses_into_messages():
    text = "\n\nHuman: hi\n\nAssistant: hello there\n\nHuman: and you?"
    assert parse_hh_conversation(text, "x") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "and you?"},
    ]
    with pytest.raises(ConfigError, match="x: not a"):
        parse_hh_conversation("just text", "x")


HH_CONVERSATION = "\n\nHuman: Is 7 prime?\n\nAssistant: Let me think.\n\nHuman: Well?"
HH_ROW = {
    "chosen": HH_CONVERSATION + "\n\nAssistant: Yes.",
    "rejected": HH_CONVERSATION + "\n\nAssistant: No.",
}
HH_PROMPT = "Human: Is 7 prime?\n\nAssistant: Let me think.\n\nHuman: Well?\n\nAssistant:"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"prompt": "Is 7 prime?", "chosen": "Yes.", "rejected": "No."},
            ("Is 7 prime?", "Yes.", "No."),
        ),
        (
            {
                "prompt": [{"role": "user", "content": "Is 7 prime?"}],
                "chosen": [{"role": "assistant", "content": "Yes."}],
                "rejected": [{"role": "assistant", "content": "No."}],
            },
            ("Is 7 prime?", "Yes.", "No."),
        ),
        (
            {
                "chosen": [
                    {"role": "user", "content": "Is 7 prime?"},
                    {"role": "assistant", "content": "Yes."},
                ],
                "rejected": [
                    {"role": "user", "content": "Is 7 prime?"},
                    {"role": "assistant", "content": "No."},
                ],
            },
            ("Is 7 prime?", "Yes.", "No."),
        ),
        (HH_ROW, (HH_PROMPT, "Yes.", "No.")),
    ],
)
def test_every_layout_gives_the_same_kind_of_pair(row, expected):
    prompt, chosen, rejected = expected
    # no chat template: the plain Human/Assistant form
    pair = pair_from_row(row, _CharTokenizer(), "f.jsonl:1")
    if not prompt.startswith("Human:"):
        prompt = f"Human: {prompt}\n\nAssistant:"
    assert pair == PreferencePair(prompt, chosen, rejected)


def test_the_chat_template_renders_the_prompt_messages():
    tok = load_tokenizer("bundled")
    pair = pair_from_row(HH_ROW, tok, "f.jsonl:1")
    assert pair.prompt == tok.apply_chat_template(
        [
            {"role": "user", "content": "Is 7 prime?"},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": "Well?"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert pair.prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "c"}, "f.jsonl:3: missing field 'rejected'"),
        ({"rejected": "r"}, "f.jsonl:3: missing field 'chosen'"),
        ({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}, "'prompt' must be"),
        ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "no '"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: b"},
            "differ before the last Assistant turn",
        ),
        ([1, 2], "need an object"),
    ],
)
def test_bad_rows_name_the_place_and_the_problem(row, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        pair_from_row(row, _CharTokenizer(), "f.jsonl:3")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_rlhf_layout_through_the_datasets_loader(tmp_path):
    data = tmp_path / "hh"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", [HH_ROW] * 3)
    flipped = {"chosen": HH_ROW["rejected"], "rejected": HH_ROW["chosen"]}
    _write_jsonl(data / "test.jsonl", [flipped] * 2)
    cfg = PreferenceDataConfig(source="dataset", train_path=str(data), train_size=2)
    train, held = load_preference_pairs(cfg, _CharTokenizer(), [], [])
    assert train == [PreferencePair(HH_PROMPT, "Yes.", "No.")] * 2  # train_size caps it
    assert held == [PreferencePair(HH_PROMPT, "No.", "Yes.")] * 2
    with pytest.raises(ConfigError, match="validation"):
        load_preference_pairs(
            cfg.model_copy(update={"eval_split": "validation"}), _CharTokenizer(), [], []
        )


def test_datasets_loader_reads_one_local_file_and_names_bad_rows(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [HH_ROW, {"chosen": HH_ROW["chosen"]}])
    cfg = PreferenceDataConfig(source="dataset", train_path=str(path), eval_split="train")
    with pytest.raises(ConfigError, match=r"pairs.jsonl \[train\] row 1: missing field 'rejected'"):
        load_preference_pairs(cfg, _CharTokenizer(), [], [])


def test_jsonl_files(tmp_path):
    train = _write_jsonl(
        tmp_path / "train.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    )
    held = tmp_path / "held.jsonl"
    held.write_text('\n{"prompt": "p", "chosen": "c"}\n')
    cfg = PreferenceDataConfig(source="jsonl", train_path=str(train), eval_path=str(train))
    assert load_preference_pairs(cfg, _CharTokenizer(), [], [])[0] == [
        PreferencePair("Human: p\n\nAssistant:", "c", "r")
    ]
    cfg = cfg.model_copy(update={"eval_path": str(held)})
    with pytest.raises(ConfigError, match="held.jsonl:2: missing field 'rejected'"):
        load_preference_pairs(cfg, _CharTokenizer(), [], [])
    cfg = cfg.model_copy(update={"eval_path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ConfigError, match="nope.jsonl"):
        load_preference_pairs(cfg, _CharTokenizer(), [], [])


def test_generated_source_uses_the_task_splits_and_the_chat_template():
    tok = load_tokenizer("bundled")
    cfg = PreferenceDataConfig(train_size=5, eval_size=4)
    train, held = load_preference_pairs(cfg, tok, SAMPLES[:10], SAMPLES[10:])
    assert len(train) == 5 and len(held) == 4
    assert held[0].chosen == solution_text(SAMPLES[10])
    assert held[0].prompt.startswith("<|im_start|>user\n" + SAMPLES[10].prompt)


def test_encode_pairs_keeps_a_prompt_that_fits_whole():
    # room for 5 prompt tokens, the prompt has 3: nothing may be cut
    (pair,), truncated = encode_pairs([PreferencePair("abc", "x", "y")], _CharTokenizer(), 7)
    assert pair.prompt == [97, 98, 99] and truncated == 0
