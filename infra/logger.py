"""What a run writes as it goes: TensorBoard events, `metrics.jsonl`, GIFs, progress bars.

    logger = Logger(run_dir)                       # or Logger(run_dir, resume_step=step)
    logger.log(step, {"train/loss": 0.3, "eval/return": 812.0})
    logger.image(step, "recon", frame)             # (H, W, C) uint8
    logger.video(step, "openloop", frames)         # (T, H, W, C) uint8 -> gifs/ and TensorBoard

`metrics.jsonl` holds one JSON object per line, `{"step": ..., <name>: <value>, ...}`; scalars
that are not finite are written as null (JSON has no NaN). On resume, rows and TensorBoard events
after the checkpoint's step are dropped: the resumed run writes them again.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from tqdm.auto import tqdm

from wmrl.infra.config import atomic_write_bytes, atomic_write_text

METRICS_FILE = "metrics.jsonl"
GIF_DIR = "gifs"


def progress(total: int | None = None, **kwargs):
    """A tqdm progress bar on stderr; `disable=True` hides it (as `--no-progress` scripts may)."""
    return tqdm(total=total, dynamic_ncols=True, mininterval=1.0, **kwargs)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every row of a run's `metrics.jsonl`, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def as_uint8_frames(frames) -> np.ndarray:
    """(T, H, W, C) or (H, W, C) uint8 or floats in [0, 1] -> uint8 with C in {1, 3}."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must end in 1 or 3 channels (..., H, W, C), got {frames.shape}")
    return frames


def encode_gif(frames, fps: float = 10.0) -> bytes:
    """(T, H, W, C) frames -> the bytes of a looping GIF."""
    frames = as_uint8_frames(frames)
    if frames.ndim != 4:
        raise ValueError(f"a video needs frames (T, H, W, C), got {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    buffer = io.BytesIO()
    imageio.mimwrite(buffer, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    return buffer.getvalue()


class Logger:
    """Scalars to TensorBoard and `metrics.jsonl`, images to TensorBoard, videos as GIFs.

    Args:
        run_dir: the run directory (exists).
        resume_step: on resume, the step of the checkpoint; later rows are dropped.
        tensorboard: write TensorBoard events (False leaves only metrics.jsonl and GIFs).
    """

    def __init__(
        self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True
    ):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None and self.metrics_path.exists():
            kept = [row for row in read_metrics(self.run_dir) if row["step"] <= resume_step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._metrics = open(self.metrics_path, "a")  # noqa: SIM115 (closed in close())
        self._writer = None
        if tensorboard:
            # TensorBoard loads only for runs that write events (it takes a while to import).
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(str(self.run_dir), purge_step=purge, flush_secs=30)

    def drop(self, prefix: str, after: int) -> None:
        """Drop the rows of `metrics.jsonl` with a name under `prefix` (e.g. "vae/") logged after
        step `after`: a pipeline's stage resumed from its checkpoint at `after` logs them again,
        on its own step axis. (TensorBoard keeps its events: it has no way to drop one tag's.)"""
        self._metrics.flush()
        rows = read_metrics(self.run_dir)
        kept = [r for r in rows if r["step"] <= after or not any(k.startswith(prefix) for k in r)]
        if len(kept) < len(rows):
            self._metrics.close()
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            self._metrics = open(self.metrics_path, "a")  # noqa: SIM115 (closed in close())

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """One row of scalars at `step` (numbers, 0-d arrays or 0-d tensors)."""
        row = {"step": int(step)}
        for name, value in scalars.items():
            value = float(value.item() if hasattr(value, "item") else value)
            row[name] = value if math.isfinite(value) else None
            if self._writer is not None:
                self._writer.add_scalar(name, value, int(step))
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()

    def image(self, step: int, name: str, image) -> None:
        """An image (H, W, C), uint8 or floats in [0, 1], to TensorBoard."""
        if self._writer is not None:
            self._writer.add_image(name, as_uint8_frames(image), int(step), dataformats="HWC")

    def video(self, step: int, name: str, frames, fps: float = 10.0) -> Path:
        """A video (T, H, W, C) as `gifs/<name>_<step>.gif` and as an animated TensorBoard image.

        Returns the GIF's path. (TensorBoard's own add_video needs moviepy; this does not.)
        """
        data = encode_gif(frames, fps)
        gif_dir = self.run_dir / GIF_DIR
        gif_dir.mkdir(exist_ok=True)
        path = gif_dir / f"{name.replace('/', '_')}_{int(step):08d}.gif"
        atomic_write_bytes(path, data)
        if self._writer is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary  # loaded with TensorBoard

            t, h, w, c = np.asarray(frames).shape
            image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=data)
            summary = Summary(value=[Summary.Value(tag=name, image=image)])
            self._writer._get_file_writer().add_summary(summary, int(step))
        return path

    def flush(self) -> None:
        self._metrics.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
