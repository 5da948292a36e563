"""Networks shared by the dynamics models: the World Models conv encoder and decoder (Ha and
Schmidhuber 2018, as PlaNet uses them), MLP variants for vector observations, batched ensemble
layers and MLPs (members as a leading dimension), and PlaNet's pixel preprocessing.

Pixels are (..., H, W, C) uint8 everywhere outside the networks; the conv nets move channels
first themselves, so a model's `decode` returns frames in the same layout as its input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def preprocess_obs(obs: torch.Tensor, bits: int = 5, noise: bool = True) -> torch.Tensor:
    """uint8 pixels -> float in [-0.5, 0.5), quantised to `bits` bits (PlaNet's `preprocess`).

    x = floor(obs / 2**(8 - bits)) / 2**bits + U(0, 1 / 2**bits) - 0.5. The uniform noise
    dequantises: the decoder's Gaussian then models a density over each bin rather than
    spikes at 2**bits values. Call it on the device: the uint8 tensor is what crosses the bus.

    Args:
        obs: (..., H, W, C) uint8 (any integer or float dtype holding 0..255 works).
    Returns:
        (..., H, W, C) float32, on obs's device.
    """
    bins = 2**bits
    x = obs.float()
    if bits < 8:
        x = torch.floor(x / 2 ** (8 - bits))
    x = x / bins
    if noise:
        x = x + torch.rand_like(x) / bins
    return x - 0.5


def postprocess_obs(x: torch.Tensor, bits: int = 5) -> torch.Tensor:
    """The inverse of `preprocess_obs` (PlaNet's `postprocess`): a decoded frame (..., H, W, C)
    in [-0.5, 0.5) -> uint8 (..., H, W, C) for GIFs, each value the bottom of its bin."""
    bins = 2**bits
    x = torch.floor(bins * (x + 0.5)) * (256 / bins)
    return x.clamp(0, 255).to(torch.uint8)


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: int | Sequence[int],
    layers: int | None = None,
    act=nn.ReLU,
    layernorm: bool = False,
) -> nn.Sequential:
    """Hidden layers (Linear, LayerNorm if `layernorm`, act), then a linear output layer: `layers`
    of width `hidden`, or one per width when `hidden` is a sequence (`layers` then unused)."""
    widths = [hidden] * int(layers or 0) if isinstance(hidden, int) else list(hidden)
    dims = [in_dim, *widths]
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        modules += [nn.Linear(a, b), *([nn.LayerNorm(b)] if layernorm else []), act()]
    modules.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*modules)


class EnsembleLinear(nn.Module):
    """N independent linear layers as one batched matmul: (N, B, in) -> (N, B, out).

    Each member is initialised as `nn.Linear` would be (uniform, bound 1/sqrt(in))."""

    def __init__(self, in_dim: int, out_dim: int, members: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same input for every member: x (B, in) -> (N, B, out), as `forward` on x
        expanded to (N, B, in), but one (B, in) @ (in, N * out) matmul: the batched matmul
        would copy the expanded input N times, forward and backward."""
        members, in_dim, out_dim = self.weight.shape
        weight = self.weight.transpose(0, 1).reshape(in_dim, members * out_dim)
        bias = self.bias.transpose(0, 1).reshape(1, members * out_dim)
        return torch.addmm(bias, x, weight).view(-1, members, out_dim).transpose(0, 1)


class EnsembleMLP(nn.Module):
    """N independent MLPs as one module, members as the leading dimension: `layers` hidden
    `EnsembleLinear` layers of width `hidden`, each followed by `act`, then a linear `head`.

    (N, B, in) -> (N, B, out); member i reads x[i] only. Shared by MOReL's dynamics ensemble
    (`worldmodels.ensemble`, ReLU) and Plan2Explore's latent predictors
    (`worldmodels.disagreement`, ELU), so that neither runs a Python loop over its members."""

    def __init__(
        self, in_dim: int, out_dim: int, members: int, hidden: int, layers: int, act=nn.ReLU
    ):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.hidden_layers = nn.ModuleList(
            EnsembleLinear(i, o, members) for i, o in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = EnsembleLinear(dims[-1], out_dim, members)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden_layers:
            x = self.act(layer(x))
        return self.head(x)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Every member on the same input: x (B, in) -> (N, B, out), `forward` of x expanded
        to (N, B, in) without the expansion (`EnsembleLinear.shared` for the first layer)."""
        layers = [*self.hidden_layers, self.head]
        x = layers[0].shared(x)
        for layer in layers[1:]:
            x = layer(self.act(x))
        return x


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with each member's own scale and shift, (N, B, D)."""

    def __init__(self, dim: int, members: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class ConvEncoder(nn.Module):
    """World Models encoder: 4 convs (32-64-128-256 channels, kernel 4, stride 2, ReLU).

    (..., 64, 64, C) float -> (..., 1024): 64 -> 31 -> 14 -> 6 -> 2 pixels, 2 * 2 * 256 = 1024.
    DreamerV2's encoder is the same net with `depth=48` (48-96-192-384, embed 1536) and ELU.
    """

    embed_dim = 1024  # with the default depth; an instance's own value is 32 * depth

    def __init__(self, channels: int = 3, depth: int = 32, act=nn.ReLU):
        super().__init__()
        self.embed_dim = 32 * depth
        widths = (depth, 2 * depth, 4 * depth, 8 * depth)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((channels, *widths[:-1]), widths, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2), act()]
        self.net = nn.Sequential(*layers, nn.Flatten())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-3]
        x = rearrange(obs, "... h w c -> (...) c h w")
        return self.net(x).reshape(*lead, self.embed_dim)


class ConvDecoder(nn.Module):
    """World Models decoder: dense to 1024, reshape to 1024x1x1, deconvs (kernels 5, 5, 6, 6,
    stride 2, channels 128-64-32-C, ReLU between). (..., F) -> (..., 64, 64, C), the mean of a
    unit-variance Gaussian; sizes 1 -> 5 -> 13 -> 30 -> 64. DreamerV2's decoder is the same net
    with `depth=48` (dense to 1536, deconvs 192-96-48-C) and ELU."""

    def __init__(self, feat_dim: int, channels: int = 3, depth: int = 32, act=nn.ReLU):
        super().__init__()
        d = depth
        self.fc = nn.Linear(feat_dim, 32 * d)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * d, 4 * d, 5, stride=2),
            act(),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, stride=2),
            act(),
            nn.ConvTranspose2d(2 * d, d, 6, stride=2),
            act(),
            nn.ConvTranspose2d(d, channels, 6, stride=2),
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = rearrange(self.fc(feat.reshape(-1, feat.shape[-1])), "n d -> n d 1 1")
        x = self.net(x)  # (N, C, 64, 64)
        return rearrange(x.reshape(*lead, *x.shape[1:]), "... c h w -> ... h w c")


class MLPEncoder(nn.Module):
    """Vector observations (..., obs_dim) -> (..., embed_dim), two ReLU hidden layers."""

    def __init__(self, obs_dim: int, hidden: int, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.net = mlp(obs_dim, embed_dim, hidden, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class MLPDecoder(nn.Module):
    """(..., F) -> (..., obs_dim), the mean of a unit-variance Gaussian; two ReLU hidden layers."""

    def __init__(self, feat_dim: int, hidden: int, obs_dim: int):
        super().__init__()
        self.net = mlp(feat_dim, obs_dim, hidden, 2)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, event_dims: int) -> torch.Tensor:
    """-log N(target; mean, 1) summed over the last `event_dims` dimensions: (...)."""
    nll = 0.5 * (target - mean) ** 2 + 0.5 * math.log(2 * math.pi)
    return nll.flatten(-event_dims).sum(-1) if event_dims else nll


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU (danijar/dreamerv2 `common/nets.py` GRUCell with norm=True): one linear
    layer on [x, h] gives 3 * size parts, layer-normalised together, then

        reset = sigmoid(r),  cand = tanh(reset * c),  update = sigmoid(u - 1)
        h' = update * cand + (1 - update) * h

    (the reset gate scales the candidate's pre-activation, not h as in nn.GRUCell; the -1 bias
    makes the cell keep its state at first). Inputs (..., in_dim), h (..., size) -> h'.
    """

    def __init__(self, in_dim: int, size: int, update_bias: float = -1.0, eps: float = 1e-3):
        super().__init__()
        self.size, self.update_bias = size, update_bias
        self.linear = nn.Linear(in_dim + size, 3 * size)
        self.norm = nn.LayerNorm(3 * size, eps=eps)  # Keras' default epsilon, as danijar's

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


def make_optimizer(
    params, lr: float | None = None, eps: float | None = None, weight_decay: float | None = None
) -> torch.optim.AdamW:
    """Adam(lr, eps) with weight decay w <- (1 - weight_decay) w before each step, independent of
    the learning rate (danijar's `common.Optimizer`; with no decay, PlaNet's plain Adam). AdamW
    decays by lr * weight_decay, hence weight_decay / lr here. Clip gradients to the global norm
    yourself before `step` (the models' `train_step` does).

    Args:
        params: parameters, or a model whose `cfg` supplies what is not given: `lr`, `adam_eps`
            and `weight_decay` (0 where the config has none).
    Returns the fused implementation (one kernel over all parameters) on CPU and CUDA, where a
    step over many small tensors would otherwise be a Python loop of kernels."""
    cfg = getattr(params, "cfg", None)
    if cfg is not None:
        lr = cfg.lr if lr is None else lr
        eps = cfg.adam_eps if eps is None else eps
        weight_decay = getattr(cfg, "weight_decay", 0.0) if weight_decay is None else weight_decay
        params = params.parameters()
    if lr is None or eps is None:
        raise TypeError("make_optimizer needs lr and eps, or a model whose cfg has them")
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        params, lr=lr, eps=eps, weight_decay=(weight_decay or 0.0) / lr, fused=fused or None
    )


# ------------------------------------------------------------- DreamerV3's scale-free outputs
def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) ln(|x| + 1) (DreamerV3, eq. 9): squashes large magnitudes, near identity at 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `symlog`: sign(x) (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot:
    """DreamerV3's two-hot output (Hafner et al. 2023, sec. 3): `bins` logits over a uniform grid
    of [low, high] in symlog space. The prediction is symexp of the softmax's expectation over
    the grid; a target y is symlog(y) split between its two neighbouring bins in proportion to
    closeness (one bin where it falls on one, the end bin outside the grid), and the loss is the
    cross-entropy against it. Regression without a scale: the loss's gradient does not grow with
    the target's magnitude, and returns of any size are represented.

    `logits` (..., bins) -> `mean()` (...), `loss(y)` (...)."""

    def __init__(self, logits: torch.Tensor, low: float = -20.0, high: float = 20.0):
        self.logits = logits.float()
        self.grid = torch.linspace(low, high, logits.shape[-1], device=logits.device)

    def mean(self) -> torch.Tensor:
        return symexp((F.softmax(self.logits, -1) * self.grid).sum(-1))

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """The two-hot encoding (..., bins) of targets y (...) in symlog space."""
        x = symlog(y.float()).clamp(self.grid[0], self.grid[-1])
        n = self.grid.numel()
        above = torch.searchsorted(self.grid, x.unsqueeze(-1)).squeeze(-1).clamp(1, n - 1)
        below = above - 1
        lo, hi = self.grid[below], self.grid[above]
        w_above = ((x - lo) / (hi - lo)).clamp(0, 1)
        out = F.one_hot(below, n).float() * (1 - w_above).unsqueeze(-1)
        return out + F.one_hot(above, n).float() * w_above.unsqueeze(-1)

    def loss(self, y: torch.Tensor) -> torch.Tensor:
        """-sum_k twohot(y)_k log softmax(logits)_k: (...)."""
        return -(self.target(y) * F.log_softmax(self.logits, -1)).sum(-1)


def init_(module: nn.Module, init: str) -> nn.Module:
    """`init` "torch" leaves torch's initialisation, "keras" applies `keras_init_` (in place;
    returns the module); a clear error for anything else."""
    if init == "keras":
        return keras_init_(module)
    if init != "torch":
        raise ValueError(f"init must be torch or keras, got {init!r}")
    return module


def keras_init_(module: nn.Module) -> nn.Module:
    """Keras' defaults, as danijar's TensorFlow code has them: glorot-uniform weights and zero
    biases for every linear, batched-ensemble linear and conv layer in `module` (in place;
    returns it). torch's default draws weights from U(+-1/sqrt(fan_in)) (several times smaller
    for wide layers) and biases from the same range."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, EnsembleLinear):  # each member as a Dense layer of (in, out)
            fan_in, fan_out = m.weight.shape[1:]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    return module


def zero_output_(net: nn.Sequential) -> nn.Sequential:
    """Zeros the last layer of an `mlp` (DreamerV3 starts its reward and critic heads at a
    uniform two-hot, i.e. a prediction of 0)."""
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net
