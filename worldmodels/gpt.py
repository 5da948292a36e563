"""A small causal GPT: token embeddings in, hidden states out.

The transformer of the sequence models: the Decision Transformer (`offline.dt`) reads
(return-to-go, state, action) tokens with it, and the Trajectory Transformer, a world model over
discretised transitions, is to reuse it. What a token means, and its position, is the caller's:
it embeds its tokens, adds timestep or position embeddings, and reads the hidden states it wants.

    gpt = GPT(dim=128, layers=3, heads=1, attention_dropout=0.1, residual_dropout=0.1)
    h = gpt(x)                        # x (B, T, D) -> h (B, T, D)
    h = gpt(x, padding_mask=pad)      # pad (B, T) bool, True where a token is padding
    h, cache = gpt.extend(x, key_ok)  # the same outputs, and every block's keys and values
    h2, cache = gpt.extend(x2, key_ok2, cache)   # then only the new tokens x2 are computed

Pre-LayerNorm blocks (GPT-2's, as minGPT writes them), D = dim, H = heads, D / H per head:

    x = Dropout_embedding(x)
    for each block:
        x = x + Dropout_residual(W_o Attention(LN(x)))
        x = x + Dropout_residual(W_2 GELU(W_1 LN(x)))          W_1: D -> 4D, W_2: 4D -> D
    h = LN(x)

    Attention(u)_t = sum_{j allowed for t} softmax_j(q_t . k_j / sqrt(D / H)) v_j, per head,
    q, k, v = W_qkv u (one D -> 3D layer), dropout on the attention weights

Token t attends to tokens j <= t only (causal), never to padding (`padding_mask`), and, where a
caller narrows it further, only where its `attention_mask` allows. A token always attends to
itself, so that a padding token's row is never empty (its output is meaningless, not NaN); a
real token's output is unchanged by that, since a token sees no padding unless it is one.

Generation appends tokens one or a few at a time; `extend` reads only the new ones, with the
keys and values of the earlier ones kept in a cache (B, layers, 2, H, T, D / H), so a sampled
token costs one token's pass instead of the whole context's.

Initialisation (minGPT's): Linear and Embedding weights N(0, 0.02), biases 0, LayerNorm 1 and 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: (B, T, D) -> (B, T, D), before the residual dropout.

    `allowed` (B or 1, 1, T, T) bool: True where query t may attend to key j; None: causal
    (PyTorch's fused causal kernels, where the device has them)."""

    def __init__(self, dim: int, heads: int, attention_dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width {dim} must be a multiple of the heads {heads}")
        self.heads, self.attention_dropout = heads, attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)  # q, k, v stacked along the output, in that order
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (n h d) -> n b h t d", n=3, h=self.heads)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=p, is_causal=allowed is None
        )
        return self.out(rearrange(y, "b h t d -> b t (h d)"))

    def extend(self, x: torch.Tensor, allowed: torch.Tensor, past: torch.Tensor | None):
        """n new tokens x (B, n, D) after the T whose keys and values are `past` (B, 2, H, T,
        D / H) or None: (output (B, n, D), keys and values of all T + n tokens); `allowed`
        (B, 1, n, T + n)."""
        qkv = rearrange(self.qkv(x), "b t (n h d) -> b n h t d", n=3, h=self.heads)
        kv = qkv[:, 1:] if past is None else torch.cat([past, qkv[:, 1:]], 3)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(qkv[:, 0], kv[:, 0], kv[:, 1], attn_mask=allowed,
                                           dropout_p=p)  # fmt: skip
        return self.out(rearrange(y, "b h t d -> b t (h d)")), kv


class Block(nn.Module):
    """One pre-LayerNorm block: attention, then an MLP of width 4D, each a residual branch
    ending in dropout. (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, attention_dropout: float, residual_dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads, attention_dropout)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            nn.Dropout(residual_dropout),
        )
        self.dropout = nn.Dropout(residual_dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), allowed))
        return x + self.mlp(self.norm2(x))

    def extend(self, x: torch.Tensor, allowed: torch.Tensor, past: torch.Tensor | None):
        """`forward` for n new tokens after cached ones (`CausalSelfAttention.extend`):
        (output (B, n, D), keys and values of all tokens (B, 2, H, T + n, D / H))."""
        y, kv = self.attention.extend(self.norm1(x), allowed, past)
        x = x + self.dropout(y)
        return x + self.mlp(self.norm2(x)), kv


class GPT(nn.Module):
    """`layers` causal blocks of width `dim` with `heads` heads, then a final LayerNorm.

    forward(x (B, T, D), padding_mask (B, T) bool or None, attention_mask (T, T) bool or None)
    -> hidden states (B, T, D). `padding_mask` is True at padding tokens, which no other token
    attends to; `attention_mask` is True where query t may attend to key j, and-ed with the
    causal mask (a model whose tokens must not see some earlier ones). Any length T works:
    positions are the caller's."""

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int = 1,
        attention_dropout: float = 0.0,
        residual_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.dropout = nn.Dropout(embedding_dropout)
        self.blocks = nn.ModuleList(
            Block(dim, heads, attention_dropout, residual_dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)

    def allowed(
        self,
        length: int,
        padding_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """The attention pattern (B or 1, 1, T, T) bool, True where query t attends to key j:
        causal, no padding keys, `attention_mask` where given, and always the diagonal."""
        eye = torch.eye(length, dtype=torch.bool, device=device)
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        if attention_mask is not None:
            allowed = allowed & attention_mask
        allowed = allowed[None, None]
        if padding_mask is not None:
            allowed = allowed & ~padding_mask[:, None, None, :]
        return allowed | eye

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        allowed = None  # causal only
        if padding_mask is not None or attention_mask is not None:
            allowed = self.allowed(x.shape[1], padding_mask, attention_mask, x.device)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def extend(
        self, x: torch.Tensor, key_ok: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read n tokens after the T tokens of `cache`, for generation.

        x (B, n, D): the new tokens' inputs; key_ok (B, T + n) bool: True where a token may be
        attended to (False at padding, or at tokens no other token reads); cache (B, layers,
        2, H, T, D / H): the earlier tokens' keys and values, as a previous call returned
        them, or None (T = 0). Returns (hidden states of the new tokens (B, n, D), the cache
        of all T + n tokens). Token t attends to the tokens j <= t with key_ok[j], and to
        itself: `forward`'s pattern when its padding and attention masks only mask keys, and
        the same outputs (up to rounding) as `forward` over all T + n tokens, at the cost of
        the n new ones. The cache's rows follow the batch, so beams index it like any state.
        """
        T = 0 if cache is None else cache.shape[4]
        n = x.shape[1]
        if key_ok.shape != (x.shape[0], T + n):
            raise ValueError(f"key_ok {tuple(key_ok.shape)} is not (B, T + n) = "
                             f"({x.shape[0]}, {T + n})")  # fmt: skip
        keys = torch.arange(T + n, device=x.device)
        queries = keys[T:, None]
        allowed = (keys <= queries) & key_ok[:, None, :] | (keys == queries)  # (B, n, T + n)
        x = self.dropout(x)
        kvs = []
        for layer, block in enumerate(self.blocks):
            x, kv = block.extend(x, allowed[:, None], None if cache is None else cache[:, layer])
            kvs.append(kv)
        return self.norm(x), torch.stack(kvs, 1)


def init_weights(module: nn.Module) -> None:
    """minGPT's initialisation, for `module.apply`: Linear and Embedding weights N(0, 0.02),
    Linear biases 0, LayerNorm weights 1 and biases 0."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
