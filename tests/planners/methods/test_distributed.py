"""Data-parallel DreamerV2 and PlaNet under `torchrun` (2 ranks, gloo on the CPU): one DDP update
gives the gradients of one process on the concatenated batch, and both training scripts run,
checkpoint and resume on 2 ranks with equal weights on each.

This file is also the ranks' program: `torchrun ... test_distributed.py update <dir>` makes one
DDP update on the batch the test saved, `... train <script> <dir> <args>` runs a training script
and saves each rank's weights (the modules it wrapped in DDP) when it ends.
"""

import contextlib
import os
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from wmrl.envs.replay import iter_episodes
from wmrl.infra import distributed, load_checkpoint, read_metrics
from wmrl.planners.actor_critic import ActorCriticConfig, TruncNormal
from wmrl.planners.methods.dreamer import DreamerConfig, make_update, random_batch, setup_update
from wmrl.worldmodels import categorical_rssm
from wmrl.worldmodels.categorical_rssm import CategoricalRSSMConfig

ROOT = Path(__file__).resolve().parents[3]
OBS, ACTIONS, B, T = (5,), 2, 3, 8  # state observations; B sequences per rank


def torchrun(*args, timeout: int = 150) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 --standalone <args>` on one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


# ------------------------------------------------------------------------ one DDP update
def small_config() -> DreamerConfig:
    """A tiny DreamerV2 on state observations. Free nats off: max(mean KL, free) over a batch is
    not the mean of the two halves' (each rank clamps its own batch's mean); a huge grad_clip,
    so that clipping (a factor of exactly 1) cannot be what makes gradients agree."""
    model = CategoricalRSSMConfig(deter=16, hidden=16, stoch=4, classes=4, mlp_layers=1,
                                  mlp_units=16, free_nats=0.0, grad_clip=1e9)  # fmt: skip
    ac = ActorCriticConfig(horizon=4, layers=1, units=16, grad_clip=1e9)
    return DreamerConfig(obs_type="state", model=model, ac=ac)


@contextlib.contextmanager
def deterministic_sampling():
    """The update's noise as a function of where a draw sits in its sample, never of its batch
    row: u = linspace(...) over the latents (posterior and prior one-hots) and over the action
    dims (the actor's samples in imagination), the same in every row. Random draws would differ
    between one draw for 2B rows and two draws for B rows each; these are the same whatever the
    split, so the gradients can be compared. The gradients still flow (straight-through, and
    the reparameterised truncated normal)."""

    def onehot(logits):
        probs = torch.softmax(logits.float(), -1)
        S, K = probs.shape[-2:]
        u = torch.linspace(0.1, 0.9, S).reshape(S, 1).expand(probs.shape[:-1] + (1,))
        index = (probs.cumsum(-1) < u).sum(-1).clamp(max=K - 1)
        return torch.nn.functional.one_hot(index, K).to(probs.dtype) + probs - probs.detach()

    def rsample(self):
        u = torch.linspace(0.2, 0.8, self.loc.shape[-1]).expand_as(self.loc)
        p = (self._cdf_alpha + u * self._z).clamp(1e-7, 1 - 1e-7)
        x = self.loc + self.scale * torch.special.ndtri(p)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    with (
        mock.patch.object(categorical_rssm, "straight_through_onehot", onehot),
        mock.patch.object(TruncNormal, "rsample", rsample),
    ):
        yield


def gradients(model, ac) -> dict[str, torch.Tensor]:
    """The .grad of every trained parameter after an update (the world model's, the actor's and
    the critic's), by name."""
    parts = {"model": model, "actor": ac.actor, "critic": ac.critic}
    return {
        f"{part}.{name}": p.grad.clone()
        for part, module in parts.items()
        for name, p in module.named_parameters()
    }


def one_process_gradients(batch: dict) -> dict[str, torch.Tensor]:
    """The gradients of one update in one process (no DDP) on `batch`, from rank 0's weights."""
    torch.manual_seed(100)
    with deterministic_sampling():
        model, ac, optimizer = setup_update(OBS, ACTIONS, "cpu", small_config())
        make_update(model, ac, optimizer, "cpu", sync=False)(batch)
    return gradients(model, ac)


def update_worker(out: Path) -> None:
    """A rank's part of the gradient test: rows [rB, (r+1)B) of the saved 2B batch, one update
    through DDP, its gradients saved; three more updates (each backward must give every DDP
    reducer what it expects, the actor's included, which passes through the frozen world
    model), then the weights saved."""
    world = distributed.launched(parallel=True)
    device = distributed.start(world, "cpu")
    torch.manual_seed(100 + world.rank)  # unlike weights: DDP must give every rank rank 0's
    with deterministic_sampling():
        model, ac, optimizer = setup_update(OBS, ACTIONS, device, small_config())
        update = make_update(model, ac, optimizer, device, sync=False, wrap=distributed.wrap)
        batch = dict(np.load(out / "batch.npz"))
        rows = slice(world.rank * B, (world.rank + 1) * B)
        update({k: v[rows] for k, v in batch.items()})
        torch.save(gradients(model, ac), out / f"grads-{world.rank}.pt")
        for seed in range(3):
            update(random_batch(OBS, ACTIONS, B, T, seed=10 * world.rank + seed))
    weights = {**model.state_dict(), **{f"ac.{k}": v for k, v in ac.state_dict().items()}}
    torch.save(weights, out / f"weights-{world.rank}.pt")
    distributed.finish()


def test_a_two_rank_ddp_update_has_the_gradients_of_one_process_on_the_whole_batch(tmp_path):
    batch = random_batch(OBS, ACTIONS, 2 * B, T, seed=1)
    np.savez(tmp_path / "batch.npz", **batch)
    done = torchrun(__file__, "update", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    want = one_process_gradients(batch)
    for part in ("model.", "actor.", "critic."):
        norm = sum(float(g.norm()) for k, g in want.items() if k.startswith(part))
        assert norm > 1e-3, f"{part} gets no gradient: the comparison would prove nothing"
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grads-{rank}.pt")
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)

    # The comparison can fail: a rank's own gradient, on its B rows without DDP, is not it.
    local = one_process_gradients({k: v[:B] for k, v in batch.items()})
    for part in ("model.", "actor.", "critic."):
        keys = [k for k in want if k.startswith(part)]
        assert not all(torch.allclose(local[k], want[k], rtol=1e-5, atol=1e-6) for k in keys)

    # Equal weights on both ranks after four updates (from unlike initial weights).
    w0, w1 = (torch.load(tmp_path / f"weights-{rank}.pt") for rank in (0, 1))
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key


# ---------------------------------------------------------------------- training scripts
def train_worker(script: str, out: Path, argv: list[str]) -> None:
    """A rank running `script` with `argv` as torchrun would run it, then saving the state of
    each module the loop put in DDP (so, what every rank trained) as weights-<rank>.pt."""
    wrapped, wrap = [], distributed.wrap

    def recording(module, device):
        wrapped.append(module)
        return wrap(module, device)

    distributed.wrap = recording
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
    states = {f"{i}.{type(m).__name__}": m.state_dict() for i, m in enumerate(wrapped)}
    torch.save(states, out / f"weights-{os.environ['RANK']}.pt")


def check_two_rank_run(run: Path, weights: Path, env_steps: int) -> dict:
    """Rank 0's run directory holds the logs and the one checkpoint (with rank 1's part), rank
    1's only its replay, of other episodes than rank 0's; both ranks end with equal weights, the
    checkpoint's. Returns the checkpoint's state."""
    rows = read_metrics(run)
    assert rows and rows[-1]["step"] == env_steps and "eval/return" in rows[-1]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["ranks"]) == 1
    assert state["env_steps"] == env_steps
    assert sorted(p.name for p in (run / "ranks" / "1").iterdir()) == ["replay"]
    ours, theirs = (next(iter_episodes(d / "replay")) for d in (run, run / "ranks" / "1"))
    assert not np.array_equal(ours["actions"], theirs["actions"])  # own seeds, own episodes
    w0, w1 = (torch.load(weights / f"weights-{rank}.pt") for rank in (0, 1))
    assert w0.keys() == w1.keys() and len(w0) >= 1
    for name in w0:
        for key in w0[name]:
            assert torch.equal(w0[name][key], w1[name][key]), (name, key)
    model = next(w for name, w in w0.items() if name.endswith("ModelLoss"))
    for key, value in state["model"].items():
        assert torch.equal(value, model[f"model.{key}"]), key
    return state


def resume_on_two_ranks(script: str, run: Path, flag: str, more: int) -> None:
    """`--resume` with a larger budget on 2 ranks, from the script itself, continues the run
    (its summary said once, by rank 0)."""
    done = torchrun(ROOT / "scripts" / script, "--logdir", run, "--resume", flag, more)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run_dir=") == 1


def test_dreamer_trains_on_two_ranks_and_resumes(tmp_path):
    run = tmp_path / "run"
    # Each rank: a prefill episode, then one training episode (125 policy steps at repeat 8),
    # 2 x 2 x 1000 env steps; pixels, so rank 0 writes the open-loop GIF.
    args = ["--preset", "smoke", "--env", "dmc:cartpole-swingup", "--device", "cpu",
            "--steps", "4000", "--logdir", run]  # fmt: skip
    done = torchrun(__file__, "train", ROOT / "scripts" / "train_dreamer.py", tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    state = check_two_rank_run(run, tmp_path, env_steps=4000)
    assert state["episodes"] == 1 and state["replay_episodes"] == 2
    assert state["ranks"][0]["replay_episodes"] == 2
    assert [p.name for p in (run / "gifs").iterdir()] == ["openloop_00004000.gif"]

    resume_on_two_ranks("train_dreamer.py", run, "--steps", 6000)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["env_steps"] == 6000 and state["episodes"] == 2
    assert state["ranks"][0]["replay_episodes"] == 3
    assert read_metrics(run)[-1]["step"] == 6000

    # A resume on one process is refused in one line, changing nothing.
    alone = subprocess.run(
        [sys.executable, ROOT / "scripts" / "train_dreamer.py", "--logdir", run, "--resume"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert alone.returncode == 2, alone.stderr
    assert "was trained by 2 ranks" in alone.stderr and len(alone.stderr.splitlines()) == 1
    assert load_checkpoint(run / "checkpoint.pt")["env_steps"] == 6000


def test_planet_trains_on_two_ranks_and_resumes(tmp_path):
    run = tmp_path / "run"
    # Each rank: a seed episode, then one round of updates and a planner episode (2 episodes);
    # state observations and a small CEM, as pixels and planning cost most here.
    args = ["--preset", "smoke", "--env", "dmc:cartpole-swingup", "--device", "cpu",
            "--obs-type", "state", "--seed-episodes", "1", "--episodes", "2",
            "--train-steps", "3", "--eval-every", "2", "--cem.candidates", "20",
            "--cem.top-k", "5", "--logdir", run]  # fmt: skip
    done = torchrun(__file__, "train", ROOT / "scripts" / "train_planet.py", tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    state = check_two_rank_run(run, tmp_path, env_steps=4000)
    assert state["episodes"] == 2 and state["ranks"][0]["replay_episodes"] == 2

    resume_on_two_ranks("train_planet.py", run, "--episodes", 4)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["episodes"] == 4 and state["env_steps"] == 6000
    assert read_metrics(run)[-1]["step"] == 6000


# ------------------------------------------------------------------------- the launch
def test_torchruns_environment_and_bad_setups_get_one_clear_line():
    world = distributed.launched(True, {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert (world.rank, world.local_rank, world.size, world.parallel, world.main) == (
        1, 1, 2, True, False)  # fmt: skip
    assert distributed.launched(True, {}) == distributed.World()
    assert not distributed.launched(False, {"WORLD_SIZE": "1"}).parallel
    with pytest.raises(ValueError, match="does not train data-parallel"):
        distributed.launched(False, {"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not a valid rank"):
        distributed.launched(True, {"RANK": "2", "WORLD_SIZE": "2"})
    assert distributed.rank_device("cpu", world) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            distributed.rank_device("cuda", world)
    assert distributed.wrap(m := torch.nn.Linear(2, 2), "cpu") is m  # no process group


if __name__ == "__main__":
    if sys.argv[1] == "update":
        update_worker(Path(sys.argv[2]))
    elif sys.argv[1] == "train":
        train_worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
