"""The causal GPT: attention against a hand computation, causality, padding on either side,
a caller's narrower mask, dropout only in training, and the key/value cache of generation."""

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


@pytest.mark.parametrize("chunks", [[7], [3, 1, 1, 2], [1] * 7])
def test_extending_a_cache_gives_the_full_pass_outputs(chunks):
    """Tokens read in chunks through the cache give what one forward over all of them gives,
    with left padding and a key no other token may read (token 4), per batch row."""
    torch.manual_seed(0)
    gpt = GPT(D, layers=2, heads=2).eval()
    x = torch.randn(B, 7, D)
    pad = torch.zeros(B, 7, dtype=torch.bool)
    pad[1, :2] = True  # row 1 starts with two padding tokens
    hidden = torch.ones(7, dtype=torch.bool)
    hidden[4] = False
    expected = gpt(x, padding_mask=pad, attention_mask=hidden.expand(7, 7))
    key_ok = ~pad & hidden
    cache, outs, start = None, [], 0
    for n in chunks:
        h, cache = gpt.extend(x[:, start : start + n], key_ok[:, : start + n], cache)
        outs.append(h)
        start += n
    assert cache.shape == (B, 2, 2, 2, 7, D // 2)  # (B, layers, k and v, heads, T, D / H)
    torch.testing.assert_close(torch.cat(outs, 1), expected, rtol=1e-5, atol=1e-5)


def test_extend_refuses_a_key_mask_of_the_wrong_length():
    gpt = GPT(D, layers=1, heads=1).eval()
    _, cache = gpt.extend(torch.randn(B, 3, D), torch.ones(B, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_ok \(2, 4\) is not \(B, T \+ n\) = \(2, 5\)"):
        gpt.extend(torch.randn(B, 2, D), torch.ones(B, 4, dtype=torch.bool), cache)
