"""What chooses actions with a model: CEM-MPC, CMA-ES controllers, the imagination actor-critic
and NPG. Planners see models only through `worldmodels.WorldModel`."""

from planners.cem import CEMConfig, Planner, cem_plan
from planners.planet import PRESETS as PLANET_PRESETS
from planners.planet import PlaNetConfig, train_planet

__all__ = ["PLANET_PRESETS", "CEMConfig", "PlaNetConfig", "Planner", "cem_plan", "train_planet"]
