"""What chooses actions with a model: CEM-MPC, CMA-ES controllers, the imagination actor-critic
and NPG. Planners see models only through `worldmodels.WorldModel`."""

from planners.cem import CEMConfig, Planner, cem_plan

__all__ = ["CEMConfig", "Planner", "cem_plan"]
