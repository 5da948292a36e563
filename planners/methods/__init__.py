"""The online methods: a model, a planner and a training loop each, one file per method.

- `planet`: PlaNet = Gaussian RSSM (`worldmodels.rssm`) + CEM-MPC (`planners.cem`).
- `dreamer`: DreamerV2 = categorical RSSM (`worldmodels.categorical_rssm`) + the imagination
  actor-critic (`planners.actor_critic`).
- `plan2explore`: Plan2Explore's disagreement ensemble (`worldmodels.disagreement`) and
  explorer (a second imagination actor-critic), in DreamerV2's loop with `--explore plan2explore`.
- `world_models`: World Models = ConvVAE + MDN-RNN (`worldmodels.vae`, `worldmodels.mdnrnn`) +
  a linear controller searched with CMA-ES (`planners.controller`).
- `runs`: saved runs of any of them, loaded back for rendering.
"""

from wmrl.planners.methods.dreamer import PRESETS as DREAMER_PRESETS
from wmrl.planners.methods.dreamer import DreamerConfig, train_dreamer
from wmrl.planners.methods.plan2explore import Plan2Explore, Plan2ExploreConfig
from wmrl.planners.methods.planet import PRESETS as PLANET_PRESETS
from wmrl.planners.methods.planet import PlaNetConfig, train_planet
from wmrl.planners.methods.world_models import PRESETS as WORLDMODELS_PRESETS
from wmrl.planners.methods.world_models import WorldModelsConfig, train_worldmodels

__all__ = [
    "DREAMER_PRESETS",
    "PLANET_PRESETS",
    "WORLDMODELS_PRESETS",
    "DreamerConfig",
    "PlaNetConfig",
    "Plan2Explore",
    "Plan2ExploreConfig",
    "WorldModelsConfig",
    "train_dreamer",
    "train_planet",
    "train_worldmodels",
]
