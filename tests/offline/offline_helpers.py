"""What several offline test modules share: a random transition batch of the suite's keys and
`scripts/train_offline.py`'s main, run in this process."""

import importlib.util
from pathlib import Path

import torch

S, A, B = 3, 2, 8  # state and action dims, batch size
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def make_batch(n=B, seed=0, max_action=1.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n, S, generator=g),
        "actions": (torch.rand(n, A, generator=g) * 2 - 1) * max_action,
        "rewards": torch.randn(n, generator=g),
        "next_observations": torch.randn(n, S, generator=g),
        "dones": (torch.rand(n, generator=g) < 0.3).float(),
        "next_actions": (torch.rand(n, A, generator=g) * 2 - 1) * max_action,
    }


def train_offline_main(argv):
    """scripts/train_offline.py's main(argv): its summary dict."""
    spec = importlib.util.spec_from_file_location("train_offline", SCRIPTS / "train_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)
