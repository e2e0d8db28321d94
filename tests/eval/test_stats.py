from itertools import combinations

import pytest

from reasonrl.eval import mean_ci, pass_at_k, wilson_interval


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"), [(8, 2, 1, 0.25), (8, 2, 8, 1.0), (5, 1, 2, 0.4), (4, 0, 2, 0.0)]
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_hit():
    n = 7
    for c in range(n + 1):
        for k in range(1, n + 1):
            subsets = list(combinations([i < c for i in range(n)], k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775


def test_mean_ci():
    mean, low, high = mean_ci([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and low < 0.5 < high
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)


@pytest.mark.parametrize("n", [1, 3, 7, 500])
def test_wilson_interval_holds_the_proportion_at_the_ends(n):
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0


def test_paired_change_is_the_ci_of_the_differences():
    from reasonrl.eval.stats import Z95, paired_change

    before = [-3.0, -1.0, 0.0, 2.0, 5.0]
    after = [-2.5, -0.6, 0.6, 2.3, 5.7]  # every problem up by 0.3 to 0.7
    mean, low, high = paired_change(before, after)
    diffs = [0.5, 0.4, 0.6, 0.3, 0.7]
    sd = (sum((d - 0.5) ** 2 for d in diffs) / 4) ** 0.5
    assert mean == pytest.approx(0.5)
    half = Z95 * sd / 5**0.5
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half))
    # the two means' own intervals overlap widely; the paired one excludes 0
    assert mean_ci(before, clip=False)[2] > mean_ci(after, clip=False)[1] and low > 0
    with pytest.raises(ValueError, match="same problems"):
        paired_change(before, after[:-1])
