"""MOReL GIFs: predicted states drawn through MuJoCo's qpos/qvel, HALT frames marked."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmrl.offline.morel.gif import (
    HALT_COLOR,
    imagined_vs_real,
    left_out_positions,
    set_state_from_obs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_state_written_from_an_observation_reads_back_as_that_observation():
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        obs, *_ = env.step(env.action_space.sample())
    assert left_out_positions(env, len(obs)) == 1  # Hopper leaves out x
    other = gym.make("Hopper-v5")
    other.reset(seed=1)
    set_state_from_obs(other, obs, root=np.array([0.3]))
    np.testing.assert_allclose(other.unwrapped._get_obs(), obs, atol=1e-12)
    assert other.unwrapped.data.qpos[0] == 0.3
    with pytest.raises(ValueError, match="qpos"):
        left_out_positions(env, 40)


class Replay(torch.nn.Module):
    """A fake two-member ensemble that replays the real env's dynamics for member 0 (so the
    imagined row must equal the real one) and disagrees from step `halt_at` on."""

    def __init__(self, env_id, halt_at):
        super().__init__()
        self.sim = gym.make(env_id)
        self.sim.reset(seed=0)
        self.halt_at, self.t = halt_at, 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def predict(self, obs, action):
        u = self.sim.unwrapped
        k = left_out_positions(self.sim, obs.shape[-1])
        set_state_from_obs(self.sim, obs[0].double().numpy(), u.data.qpos[:k].copy())
        nxt, *_ = self.sim.step(action[0].numpy())
        nxt = torch.as_tensor(nxt, dtype=torch.float32)[None]
        return {"next_obs": torch.stack([nxt, nxt + 1.0])}

    def disagreement(self, obs, action):
        self.t += 1
        return torch.tensor([10.0 if self.t > self.halt_at else 0.0])


def test_imagined_row_beside_the_real_one_with_halt_marked():
    policy = lambda obs: np.zeros(3, np.float32)  # noqa: E731 - stand still: a long episode
    frames, halted = imagined_vs_real(
        "Hopper-v5", Replay("Hopper-v5", halt_at=4), policy, horizon=8, threshold=1.0, size=48
    )
    assert frames.shape == (9, 48, 96, 3) and frames.dtype == np.uint8
    # The step from state 4 is the first over the threshold: frames 5.. are marked.
    assert halted.tolist() == [False] * 5 + [True] * 4
    left, right = frames[..., :48, :], frames[..., 48:, :]
    border = right[:, 0, 24]  # the top edge of the imagined half
    assert (border[halted] == HALT_COLOR).all() and not (border[~halted] == HALT_COLOR).all(1).any()
    # Member 0 replays the real dynamics, so unmarked imagined frames equal the real ones.
    np.testing.assert_array_equal(left[:5], right[:5])


@pytest.mark.filterwarnings("ignore::UserWarning")  # Minari's notes on unset metadata
def test_render_gif_draws_a_saved_morel_run(minari_dataset, tmp_path):
    import importlib.util
    from pathlib import Path

    import imageio.v3 as iio

    def script(name):
        path = Path(__file__).resolve().parents[3] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    dataset = minari_dataset("Hopper-v5", episodes=4, max_steps=40)
    run = tmp_path / "morel"
    script("train_morel")(["--dataset", dataset, "--preset", "smoke", "--iterations", "1",
                           "--logdir", str(run)])  # fmt: skip
    out = script("render_gif")(["--run", str(run), "--out", str(tmp_path / "m.gif"),
                                "--horizon", "6"])  # fmt: skip
    frames = iio.imread(out)
    assert frames.shape[1:] == (96, 192, 3) and 2 <= len(frames) <= 7
