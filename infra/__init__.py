"""Run infrastructure shared by every layer (and importing none of them): the run skeleton every
training loop uses (`Run`, `Every`, `MeanMetrics`), dataclass configs with command-line
overrides and presets, the logger (TensorBoard, metrics.jsonl, GIFs), progress bars,
atomic checkpoints and run directories, seeding and device choice, and the data-parallel setup
under torchrun (`infra.distributed`: process group, each rank's device, DDP)."""

from wmrl.infra.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    prepare_run_dir,
    read_meta,
    save_checkpoint,
)
from wmrl.infra.config import (
    ConfigError,
    apply_overrides,
    atomic_write_bytes,
    atomic_write_text,
    load_config,
    parse_config,
    save_config,
    to_dict,
)
from wmrl.infra.distributed import World
from wmrl.infra.logger import Logger, encode_gif, progress, read_metrics
from wmrl.infra.metrics import MeanMetrics, check_finite, metric_floats, settle_metrics
from wmrl.infra.run import Every, Run, RunStopped, command, run_main
from wmrl.infra.runtime import resolve_device, rng_state, seed_everything, set_rng_state

__all__ = [
    "CHECKPOINT_FILE",
    "CheckpointError",
    "Every",
    "MeanMetrics",
    "Run",
    "RunStopped",
    "World",
    "ConfigError",
    "Logger",
    "apply_overrides",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "command",
    "encode_gif",
    "load_checkpoint",
    "load_config",
    "metric_floats",
    "parse_config",
    "prepare_run_dir",
    "progress",
    "read_meta",
    "read_metrics",
    "resolve_device",
    "rng_state",
    "run_main",
    "save_checkpoint",
    "save_config",
    "seed_everything",
    "set_rng_state",
    "settle_metrics",
    "to_dict",
]
