"""infra.logger: metrics.jsonl rows, TensorBoard events (scalars, images, GIFs), and resume."""

import io

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from wmrl.infra import Logger, read_metrics, resolve_device, seed_everything


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_scalars_reach_metrics_and_tensorboard(tmp_path):
    with Logger(tmp_path) as logger:
        for step in range(3):
            logger.log(step * 10, {"train/loss": torch.tensor(1.0 / (step + 1)),
                                   "eval/return": np.float32(step)})  # fmt: skip
        logger.log(30, {"train/loss": float("nan")})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert rows[2] == {"step": 20, "train/loss": pytest.approx(1 / 3), "eval/return": 2.0}
    assert rows[3]["train/loss"] is None  # JSON has no NaN
    loss = events(tmp_path).Scalars("train/loss")
    assert [e.step for e in loss[:3]] == [0, 10, 20]
    assert loss[1].value == pytest.approx(0.5)


def test_video_is_a_gif_on_disk_and_in_tensorboard(tmp_path):
    frames = np.zeros((6, 16, 20, 3), np.uint8)
    frames[np.arange(6), :, np.arange(6) * 3] = 255  # a bright column moving right
    with Logger(tmp_path) as logger:
        path = logger.video(5, "openloop/video", frames, fps=8)
        logger.image(5, "recon", frames[0].astype(np.float32) / 255.0)
    assert path == tmp_path / "gifs" / "openloop_video_00000005.gif"
    decoded = np.stack(imageio.mimread(path))[..., :3]
    assert decoded.shape == (6, 16, 20, 3)
    np.testing.assert_array_equal(decoded, frames)  # two colours: GIF's palette is exact
    acc = events(tmp_path)
    (image,) = acc.Images("openloop/video")
    assert (image.step, image.width, image.height) == (5, 20, 16)
    assert len(imageio.mimread(io.BytesIO(image.encoded_image_string))) == 6
    assert acc.Images("recon")[0].step == 5


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    with Logger(tmp_path) as logger:
        for step in range(0, 50, 10):
            logger.log(step, {"x": step})
    with Logger(tmp_path, resume_step=20) as logger:  # the checkpoint was taken at step 20
        logger.log(30, {"x": -30})
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["x"]) for r in rows] == [(0, 0), (10, 10), (20, 20), (30, -30)]


def test_seeding_reproduces_torch_and_numpy():
    a = seed_everything(3)
    x = (torch.randn(4), np.random.rand(2), a.random(2))
    b = seed_everything(3)
    y = (torch.randn(4), np.random.rand(2), b.random(2))
    torch.testing.assert_close(x[0], y[0])
    np.testing.assert_array_equal(x[1], y[1])
    np.testing.assert_array_equal(x[2], y[2])


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device; use --device cpu"):
            resolve_device("cuda")


def test_drop_removes_one_stages_rows_after_its_checkpoint_and_keeps_the_rest(tmp_path):
    with Logger(tmp_path, tensorboard=False) as logger:
        logger.log(150, {"collect/return": 1.0})
        logger.log(300, {"collect/return": 2.0})
        for step in (10, 20, 30):
            logger.log(step, {"vae/loss": float(step)})
        logger.drop("vae/", after=10)  # the vae stage resumes from its checkpoint at 10
        logger.log(20, {"vae/loss": 21.0})
    rows = read_metrics(tmp_path)
    assert [(r["step"], *r.values()) for r in rows] == [
        (150, 150, 1.0), (300, 300, 2.0), (10, 10, 10.0), (20, 20, 21.0)
    ]  # fmt: skip
