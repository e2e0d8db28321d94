"""Packed training forwards on CUDA give what padded ones give (tests/train/test_forward.py
on the CPU), for each attention kernel that builds the packed mask itself. Skipped without CUDA."""

import pytest
import torch

from reasonrl.config import ModelConfig
from reasonrl.models import load_model
from reasonrl.models.forward import completion_logprobs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batch(b=24, p=12, c=20, vocab=300):
    gen = torch.Generator().manual_seed(0)
    prompt_lens = torch.randint(1, p + 1, (b,), generator=gen)
    completion_lens = torch.randint(1, c + 1, (b,), generator=gen)
    columns = torch.arange(p + c)
    mask = (columns >= p - prompt_lens[:, None]) & (columns < p + completion_lens[:, None])
    ids = torch.randint(3, vocab, (b, p + c), generator=gen) * mask
    return ids.cuda(), mask.long().cuda(), c


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_equals_padded_on_cuda(attn, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_model(ModelConfig(device="cuda", dtype=dtype))
    model.set_attn_implementation(attn)
    ids, mask, c = _batch()
    cmask = mask[:, -c:].bool()
    padded, _ = completion_logprobs(model, ids, mask, c)
    packed, _ = completion_logprobs(model, ids, mask, c, pack_tokens=160)
    tol = 1e-4 if dtype == "float32" else 5e-2  # bf16: another summation order
    torch.testing.assert_close(packed[cmask], padded[cmask], rtol=0, atol=tol)
    assert (packed[~cmask] == 0).all()
