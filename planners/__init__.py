"""What chooses actions with a model: CEM-MPC, CMA-ES controllers, the imagination actor-critic
and NPG. Planners see models only through `worldmodels.WorldModel`."""

from planners.actor_critic import ActorCritic, ActorCriticConfig, lambda_return
from planners.cem import CEMConfig, Planner, cem_plan
from planners.controller import ControllerConfig, ControllerSearch, LinearController
from planners.dreamer import PRESETS as DREAMER_PRESETS
from planners.dreamer import DreamerConfig, train_dreamer
from planners.planet import PRESETS as PLANET_PRESETS
from planners.planet import PlaNetConfig, train_planet
from planners.worldmodels_pipeline import PRESETS as WORLDMODELS_PRESETS
from planners.worldmodels_pipeline import WorldModelsConfig, train_worldmodels

__all__ = ["PLANET_PRESETS", "CEMConfig", "PlaNetConfig", "Planner", "cem_plan", "train_planet"]
__all__ += [
    "WORLDMODELS_PRESETS",
    "ControllerConfig",
    "ControllerSearch",
    "LinearController",
    "WorldModelsConfig",
    "train_worldmodels",
]
__all__ += [
    "DREAMER_PRESETS",
    "ActorCritic",
    "ActorCriticConfig",
    "DreamerConfig",
    "lambda_return",
    "train_dreamer",
]
