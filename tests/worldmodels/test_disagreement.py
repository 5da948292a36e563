"""worldmodels.disagreement: the batched members and their disagreement against a loop over
members run one by one, the loss against the members' NLLs by hand (with a mask), glorot init,
MOReL's ensemble built on the same batched MLP under its old parameter names, and a toy where
the region the ensemble never saw has the higher disagreement after training."""

import math

import pytest
import torch
from torch import nn

from wmrl.worldmodels.disagreement import DisagreementEnsemble, MemberSpread
from wmrl.worldmodels.ensemble import DynamicsEnsemble, EnsembleConfig
from wmrl.worldmodels.nets import EnsembleMLP

pytestmark = pytest.mark.usefixtures("one_thread")


def member_net(ens: DisagreementEnsemble, m: int) -> nn.Sequential:
    """Member m as plain nn.Linear + ELU layers holding copies of its slice of the weights."""
    modules = []
    for layer in [*ens.net.hidden_layers, ens.net.head]:
        w, b = layer.weight[m].detach(), layer.bias[m, 0].detach()  # (in, out), (out,)
        linear = nn.Linear(*w.shape)
        linear.weight.data.copy_(w.T)
        linear.bias.data.copy_(b)
        modules += [linear, nn.ELU()]
    return nn.Sequential(*modules[:-1])


def test_disagreement_equals_a_loop_over_members():
    torch.manual_seed(0)
    ens = DisagreementEnsemble(5, 4, members=6, hidden=16, layers=2)
    x = torch.randn(3, 7, 5)  # (B, T, I): every member reads the same inputs
    with torch.no_grad():
        preds = torch.stack([member_net(ens, m)(x) for m in range(6)])  # (N, B, T, D)
    torch.testing.assert_close(ens(x), preds)
    # std over members with ddof 0 (TensorFlow's reduce_std), then the mean over the D dims
    got = ens.disagreement(x).detach()
    assert got.shape == (3, 7)
    for b in range(3):
        for t in range(7):
            dims = []
            for d in range(4):
                values = [float(preds[m, b, t, d]) for m in range(6)]
                mean = sum(values) / 6
                dims.append(math.sqrt(sum((v - mean) ** 2 for v in values) / 6))
            assert float(got[b, t]) == pytest.approx(sum(dims) / 4, rel=1e-5)


def spread_by_autograd(pred: torch.Tensor) -> torch.Tensor:
    """The disagreement's formula written plainly, for autograd to differentiate."""
    return (pred - pred.mean(0)).pow(2).mean(0).sqrt().mean(-1)


def test_disagreement_gradient_equals_autograd_of_the_formula():
    """The closed-form backward of `MemberSpread` against autograd through the plain formula:
    in float64 on a spread alone (and against finite differences), then through the members
    to the inputs and every member's weights; members that agree exactly (a zero spread) give
    a zero gradient, not a NaN."""
    torch.manual_seed(2)
    pred = torch.randn(6, 3, 7, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 7, dtype=torch.float64)  # a non-uniform upstream gradient
    (got,) = torch.autograd.grad((MemberSpread.apply(pred) * weights).sum(), pred)
    (expect,) = torch.autograd.grad((spread_by_autograd(pred) * weights).sum(), pred)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(
        MemberSpread.apply, (pred[:, :2, :2].detach().requires_grad_(),)
    )

    ens = DisagreementEnsemble(5, 4, members=6, hidden=16, layers=2)
    x = torch.randn(3, 7, 5, requires_grad=True)
    params = [x, *ens.parameters()]
    got = torch.autograd.grad((ens.disagreement(x) * weights.float()).sum(), params)
    expect = torch.autograd.grad((spread_by_autograd(ens(x)) * weights.float()).sum(), params)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)

    same = torch.randn(1, 2, 3).expand(4, -1, -1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(MemberSpread.apply(same).sum(), same)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_shared_input_equals_the_expanded_batched_forward(layers):
    """`EnsembleMLP.shared(x)` (one wide matmul for the first layer) against `forward` on x
    expanded to every member: outputs and the gradients of every weight and of x."""
    torch.manual_seed(3)
    net = EnsembleMLP(6, 3, members=4, hidden=8, layers=layers, act=nn.ELU).double()
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(4, 9, 3, dtype=torch.float64)
    params = [x, *net.parameters()]
    got_out = net.shared(x)
    got = torch.autograd.grad((got_out * probe).sum(), params)
    expect_out = net(x.expand(4, -1, -1))
    expect = torch.autograd.grad((expect_out * probe).sum(), params)
    torch.testing.assert_close(got_out, expect_out, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_loss_is_the_sum_over_members_of_their_masked_mean_nll():
    torch.manual_seed(1)
    ens = DisagreementEnsemble(3, 2, members=3, hidden=8, layers=1)
    x, y = torch.randn(2, 5, 3), torch.randn(2, 5, 2)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 2] = mask[1, 4] = False  # pairs whose target belongs to another episode
    loss, per_member = ens.loss(x, y, mask)
    expect = []
    for m in range(3):
        mu = member_net(ens, m)(x)
        nll = 0.5 * ((y - mu) ** 2).sum(-1) + math.log(2 * math.pi)  # D = 2: 2 * 0.5 ln 2 pi
        expect.append(nll[mask].mean())
    torch.testing.assert_close(per_member, torch.stack(expect))
    torch.testing.assert_close(loss, torch.stack(expect).sum())
    unmasked, _ = ens.loss(x, y)
    assert not torch.isclose(unmasked, loss)


def test_keras_init_gives_every_member_glorot_weights_and_zero_biases():
    ens = DisagreementEnsemble(30, 10, members=4, hidden=50, layers=1, init="keras")
    for layer in [*ens.net.hidden_layers, ens.net.head]:
        fan_in, fan_out = layer.weight.shape[1:]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert not layer.bias.any()
    with pytest.raises(ValueError, match="at least 2 members"):
        DisagreementEnsemble(3, 2, members=1)


def test_morels_ensemble_is_the_same_batched_mlp_and_keeps_its_parameter_names():
    """One batched member MLP (`nets.EnsembleMLP`) for both ensembles; MOReL's saved weights
    keep their names."""
    morel = DynamicsEnsemble(3, 2, EnsembleConfig(members=3, hidden=8, layers=2))
    assert isinstance(morel, EnsembleMLP)
    assert isinstance(DisagreementEnsemble(3, 2, members=2, hidden=4, layers=1).net, EnsembleMLP)
    names = [n for n, _ in morel.named_parameters()]
    assert names == [
        "hidden_layers.0.weight", "hidden_layers.0.bias", "hidden_layers.1.weight",
        "hidden_layers.1.bias", "head.weight", "head.bias",
    ]  # fmt: skip


def test_the_unexplored_region_disagrees_more_after_training_on_the_explored_one():
    """Ten members learn y = f(x) on x in [-1, 0]^2 only. Afterwards they agree there (their
    spread falls well below its value at initialisation) and every point of [1, 2]^2, where no
    data pulled them together, has a higher disagreement than any explored point."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ens = DisagreementEnsemble(2, 3, members=10, hidden=32, layers=2)
    optimizer = torch.optim.Adam(ens.parameters(), lr=3e-3)

    def f(x):
        return torch.stack([torch.sin(3 * x[:, 0]), x[:, 0] * x[:, 1], torch.cos(2 * x[:, 1])], -1)

    explored = torch.rand(200, 2, generator=g) - 1.0
    unexplored = torch.rand(200, 2, generator=g) + 1.0
    with torch.no_grad():
        at_init = ens.disagreement(explored).mean()
    for _ in range(300):
        x = torch.rand(64, 2, generator=g) - 1.0
        loss, _ = ens.loss(x, f(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        seen, unseen = ens.disagreement(explored), ens.disagreement(unexplored)
    assert seen.mean() < 0.5 * at_init
    assert unseen.min() > seen.max() and unseen.mean() > 5 * seen.mean()
