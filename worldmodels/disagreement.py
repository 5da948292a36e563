"""An ensemble of one-step predictors and its disagreement: Plan2Explore's novelty signal
(Sekar et al. 2020, sec. 3; danijar/dreamerv2 `expl.py`), as one batched module.

Each of the N members maps an input x (a world-model state, with the action) to the mean of a
unit-variance Gaussian over a target y (the next step's latent), and all N learn from the same
batches; only their initial weights differ. Where the data covered x they agree; elsewhere
nothing has pulled them together, and their spread is the reward for going there:

    mu_i(x) = MLP_i(x)                                          i = 0..N-1, x (..., I), y (..., D)
    loss    = sum_i mean_rows -ln N(y; mu_i(x), 1)              (danijar's `mse` heads, summed)
    disagreement(x) = (1/D) sum_d std_i mu_i(x)_d               (std over members, ddof 0)

The members are `nets.EnsembleMLP`, the batched MLP that MOReL's dynamics ensemble also is.
Which x is paired with which y, and where the disagreement goes in an imagined sequence, is the
method's business: see `planners/methods/plan2explore.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from wmrl.worldmodels.nets import EnsembleMLP, gaussian_nll, init_


class DisagreementEnsemble(nn.Module):
    """N one-step predictors (`layers` x `hidden`, ELU as danijar's heads) from inputs (..., I)
    to targets (..., D).

    Args:
        init: "torch" (each member's layers as `nn.Linear` draws them) or "keras"
            (glorot-uniform weights and zero biases, as danijar's TensorFlow heads).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        members: int = 10,
        hidden: int = 400,
        layers: int = 4,
        init: str = "torch",
    ):
        super().__init__()
        if members < 2:
            raise ValueError(f"a disagreement needs at least 2 members, got {members}")
        self.in_dim, self.out_dim, self.members = int(in_dim), int(out_dim), int(members)
        self.net = init_(EnsembleMLP(in_dim, out_dim, members, hidden, layers, nn.ELU), init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's prediction: x (..., I) -> (N, ..., D) in float32."""
        lead = x.shape[:-1]
        pred = self.net.shared(x.reshape(-1, self.in_dim))
        return pred.float().reshape(self.members, *lead, self.out_dim)

    def loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None):
        """The summed member losses: sum_i of the mean over rows of -ln N(y; mu_i(x), 1), the NLL
        summed over the D target dims.

        Args:
            x: (..., I) inputs, y: (..., D) targets (both without gradient, as danijar's
                stop-gradients), mask: (...) 1 for the rows that count, 0 for those that do not
                (a target from another episode); None: all count. A product, not an index, so
                that nothing waits for the device.
        Returns:
            (scalar loss, per-member losses (N,)).
        """
        nll = gaussian_nll(self(x), y.float(), 1)  # (N, ...)
        if mask is None:
            per_member = nll.flatten(1).mean(1)
        else:
            mask = mask.float()
            per_member = (nll * mask).flatten(1).sum(1) / mask.sum().clamp(min=1.0)
        return per_member.sum(), per_member

    def disagreement(self, x: torch.Tensor) -> torch.Tensor:
        """The members' spread: x (..., I) -> (...), the population standard deviation over
        members of each target dim, averaged over the D dims (danijar's `std(0).mean(-1)`)."""
        return MemberSpread.apply(self(x))


class MemberSpread(torch.autograd.Function):
    """pred (N, ..., D) -> (...): the mean over D of the population std over the N members,
    with its gradient in closed form. With c = pred - mean_i pred and s_d = sqrt(mean_i c_d^2),

        d spread / d pred_(i, d) = c_(i, d) / (N D s_d)        (0 where s_d = 0, as c is there)

    one product on the saved c, where autograd's chain through the square, the two means and
    the square root costs several passes over (N, ..., D): the explorer's reward runs it on
    every imagined step."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor) -> torch.Tensor:
        centred = pred - pred.mean(0)
        std = (centred * centred).mean(0).sqrt_()
        ctx.save_for_backward(centred, std)
        return std.mean(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        centred, std = ctx.saved_tensors
        members, dims = centred.shape[0], centred.shape[-1]
        scale = grad[..., None] / (std.clamp_min(torch.finfo(std.dtype).tiny) * (members * dims))
        return centred * scale
