"""What chooses actions with a model: CEM-MPC, beam search, CMA-ES controllers, the imagination
actor-critic and NPG. Planners see models only through `worldmodels.WorldModel`.

The online methods that put a model and a planner in a training loop (PlaNet, DreamerV2, World
Models) sit in `planners.methods`."""

from wmrl.planners.actor_critic import ActorCritic, ActorCriticConfig, lambda_return
from wmrl.planners.beam import BeamConfig, BeamModel, beam_plan
from wmrl.planners.cem import CEMConfig, Planner, cem_plan
from wmrl.planners.controller import ControllerConfig, ControllerSearch, LinearController

__all__ = [
    "ActorCritic",
    "ActorCriticConfig",
    "CEMConfig",
    "ControllerConfig",
    "ControllerSearch",
    "LinearController",
    "Planner",
    "cem_plan",
    "lambda_return",
]
__all__ += ["BeamConfig", "BeamModel", "beam_plan"]
