"""MOReL (Kidambi et al. 2020) in one place: the training loop (`train`), the pessimistic MDP with
HALT (`pmdp`), and GIFs of imagined rollouts beside real ones (`gif`). Its dynamics ensemble with
USAD is `worldmodels.ensemble`; its policy optimiser, NPG, is `planners.npg`."""

from wmrl.offline.morel.train import PRESETS, MOReLConfig, train_morel

__all__ = ["PRESETS", "MOReLConfig", "train_morel"]
