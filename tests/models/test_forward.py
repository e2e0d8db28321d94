"""Teacher-forced completion log-probs: packed rows give what padded rows give."""

import pytest
import torch

from reasonrl.config import ModelConfig
from reasonrl.distributed import Ranks
from reasonrl.models import forward, load_model, resolve_model_path
from reasonrl.models.forward import completion_logprobs, pack_rows
from reasonrl.models.value import ValueModel, completion_values


def test_pack_rows_by_hand():
    assert pack_rows([3, 4, 2, 5, 9, 1], capacity=8) == [[0, 1], [2, 3], [4], [5]]
    assert pack_rows([10], capacity=4) == [[0]]  # too long for a row: a row of its own
    assert pack_rows([], capacity=4) == []


def _batch(seed=0, b=6, p=5, c=7, vocab=300):
    """[prompt, left-padded | completion, right-padded] with ragged lengths (one of each
    completion length, one full-width prompt)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, p + c), generator=gen)
    prompt_lens = [p, 1, 3, 2, 4, 5][:b]
    completion_lens = [c, 1, 4, 6, 2, 3][:b]
    mask = torch.zeros_like(ids)
    for i, (pl, cl) in enumerate(zip(prompt_lens, completion_lens, strict=True)):
        mask[i, p - pl : p + cl] = 1
    return ids * mask, mask, c


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model(ModelConfig(device="cpu")).eval()


@pytest.mark.parametrize("pack_tokens", [12, 30, 1000])  # one, several and many per row
def test_packed_logprobs_entropies_and_gradients_equal_padded(model, pack_tokens):
    ids, mask, c = _batch()
    cmask = mask[:, -c:].bool()
    results = []
    for pack in (0, pack_tokens):
        model.zero_grad()
        logp, entropy = completion_logprobs(
            model, ids, mask, c, 0.8, with_entropy=True, pack_tokens=pack
        )
        weights = torch.linspace(-1, 2, logp.numel()).view_as(logp)
        (logp * weights * cmask).sum().backward()
        grads = [q.grad.clone() for q in model.parameters() if q.grad is not None]
        results.append((logp, entropy, grads))
    (padded, ent_padded, g_padded), (packed, ent_packed, g_packed) = results
    torch.testing.assert_close(packed[cmask], padded[cmask], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent_packed[cmask], ent_padded[cmask], rtol=0, atol=1e-5)
    assert (packed[~cmask] == 0).all() and (ent_packed[~cmask] == 0).all()
    assert len(g_packed) == len(g_padded) > 0
    for a, b in zip(g_packed, g_padded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=5e-5)  # summed in another order


def test_packing_refuses_another_layout(model):
    ids, mask, c = _batch()
    holed = mask.clone()
    holed[0, -c + 2] = 0  # a hole inside a completion
    with pytest.raises(ValueError, match="left-padded"):
        completion_logprobs(model, ids, holed, c, pack_tokens=64)


def test_packed_critic_values_equal_padded():
    torch.manual_seed(0)
    critic = ValueModel.from_pretrained(resolve_model_path("bundled"))
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    ids, mask, c = _batch()
    cmask = mask[:, -c:].bool()
    padded = completion_values(critic, ids, mask, c)
    packed = completion_values(critic, ids, mask, c, pack_tokens=30)
    torch.testing.assert_close(packed[cmask], padded[cmask], rtol=0, atol=1e-5)
    assert (packed[~cmask] == 0).all() and padded[cmask].std() > 0


def test_filler_rows_add_forwards_but_change_nothing(model, monkeypatch):
    # another rank packed two rows more: this one runs two filler forwards, whose values are
    # dropped and whose gradients are exact zeros
    ids, mask, c = _batch()
    results = []
    for extra in (0, 2):
        monkeypatch.setattr(forward, "all_gather_objects", lambda n, ranks, e=extra: [n, n + e])
        packed = forward.pack_batch(ids, mask, c, 30).even(Ranks(0, 2, 0))
        assert len(packed.rows) == len(forward.pack_batch(ids, mask, c, 30).rows) + extra
        model.zero_grad()
        logp, _ = completion_logprobs(model, ids, mask, c, pack_tokens=30, ranks=Ranks(0, 2, 0))
        logp.sum().backward()
        results.append((logp, [q.grad.clone() for q in model.parameters()]))
    (logp, grads), (filled, filled_grads) = results
    assert torch.equal(filled, logp)
    assert all(torch.equal(a, b) for a, b in zip(filled_grads, grads, strict=True))
