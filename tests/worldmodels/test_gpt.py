"""The causal GPT: attention against a hand computation, causality, padding on either side,
a caller's narrower mask, and dropout only in training."""

import math

import pytest
import torch

from wmrl.worldmodels.gpt import GPT, CausalSelfAttention

pytestmark = pytest.mark.usefixtures("one_thread")
B, T, D = 2, 6, 8


def test_attention_matches_a_hand_computation_per_head():
    torch.manual_seed(0)
    attention = CausalSelfAttention(D, heads=2, attention_dropout=0.0)
    x = torch.randn(B, T, D)
    out = attention(x, None)
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).split(D, -1)
    heads = []
    for h in range(2):  # head h reads dims 4h .. 4h + 3 of q, k and v
        cols = slice(4 * h, 4 * h + 4)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(4)  # (B, T, T)
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        heads.append(weights @ v[..., cols])
    expected = torch.cat(heads, -1) @ attention.out.weight.T + attention.out.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_a_token_changes_only_the_outputs_at_and_after_it():
    torch.manual_seed(0)
    gpt = GPT(D, layers=2, heads=2).eval()
    x = torch.randn(B, T, D)
    base = gpt(x)
    assert base.shape == (B, T, D)
    for j in range(T):
        changed = x.clone()
        changed[:, j] += torch.randn(D)  # not a constant, which LayerNorm would remove
        out = gpt(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert (out[:, j:] - base[:, j:]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_real_tokens_ignore_padding_on_either_side(side):
    torch.manual_seed(0)
    gpt = GPT(D, layers=2, heads=2).eval()
    real = torch.randn(1, 4, D)
    pad = torch.randn(1, 2, D) * 10
    x = torch.cat([pad, real] if side == "left" else [real, pad], 1)
    mask = torch.tensor([[True, True, False, False, False, False]])
    mask = mask if side == "left" else mask.flip(1)
    out = gpt(x, padding_mask=mask)
    assert torch.isfinite(out).all()  # a padding token attends to itself, never to nothing
    torch.testing.assert_close(out[~mask][None], gpt(real), rtol=1e-5, atol=1e-6)


def test_a_narrower_mask_hides_the_keys_it_forbids():
    torch.manual_seed(0)
    gpt = GPT(D, layers=1, heads=1).eval()
    x = torch.randn(B, T, D)
    allowed = torch.ones(T, T, dtype=torch.bool)
    allowed[:, 2] = False  # no token but 2 itself may read token 2
    changed = x.clone()
    changed[:, 2] += torch.randn(D)
    a, b = gpt(x, attention_mask=allowed), gpt(changed, attention_mask=allowed)
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(a[:, keep], b[:, keep], rtol=0, atol=0)
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-6


def test_dropout_only_in_training():
    torch.manual_seed(0)
    gpt = GPT(D, layers=2, heads=2, attention_dropout=0.5, residual_dropout=0.5,
              embedding_dropout=0.5)  # fmt: skip
    x = torch.randn(B, T, D)
    assert not torch.equal(gpt(x), gpt(x))
    gpt.eval()
    assert torch.equal(gpt(x), gpt(x))
