from reasonrl.tasks.preferences import PreferencePair, encode_pairs


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
