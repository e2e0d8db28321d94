import torch

from reasonrl.train.data import mini_batches, step_indices


def test_step_indices_are_per_epoch_shuffles():
    first = step_indices(10, 4, 0, seed=3) + step_indices(10, 4, 1, seed=3)
    third = step_indices(10, 4, 2, seed=3)  # crosses into epoch 1
    epoch0 = first + third[:2]
    assert sorted(epoch0) == list(range(10))
    perm1 = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))
    assert third[2:] == perm1[:2].tolist()
    assert step_indices(10, 4, 2, seed=3) == third
    assert step_indices(10, 4, 2, seed=4) != third


def test_mini_batches_are_strided_over_the_steps_rows():
    # 12 rows, 4 mini-batches: row j in mini-batch j mod 4
    assert mini_batches(range(12), 4) == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    # a rank holding rows 4..11 gets the same rows, as indices into its own block
    assert mini_batches(range(4, 12), 4) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # one process with a partial last block: the last mini-batches are a row short
    assert mini_batches(range(6), 4) == [[0, 4], [1, 5], [2], [3]]


def _global(rows: range, n_mini: int, shuffle: tuple[int, int, int]) -> list[list[int]]:
    return [[rows.start + i for i in m] for m in mini_batches(rows, n_mini, shuffle)]


def test_shuffled_mini_batches_deal_each_block_by_its_own_seeded_permutation():
    n_mini, key = 4, (7, 3, 1)  # (seed, step, epoch)
    one = _global(range(16), n_mini, key)
    for block in range(4):  # each aligned block of 4 rows gives one row to every mini-batch
        rows = range(4 * block, 4 * block + 4)
        assert sorted(sum(([r for r in m if r in rows] for m in one), [])) == list(rows)
        assert all(len([r for r in m if r in rows]) == 1 for m in one)
    # any split into ranks holding whole blocks: the union is one process's mini-batch
    for blocks in ([range(0, 8), range(8, 16)], [range(0, 4), range(4, 8), range(8, 16)]):
        parts = [_global(b, n_mini, key) for b in blocks]
        assert [sorted(sum((p[m] for p in parts), [])) for m in range(n_mini)] == one
    assert one == _global(range(16), n_mini, key)  # deterministic
    others = [_global(range(16), n_mini, k) for k in [(8, 3, 1), (7, 4, 1), (7, 3, 0)]]
    assert all(other != one for other in others)  # seed, step and epoch each reshuffle
    assert one != _global(range(16), n_mini, None) and sorted(sum(one, [])) == list(range(16))
