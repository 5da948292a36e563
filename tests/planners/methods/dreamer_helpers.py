"""The tiny DreamerV2 run that the DreamerV2 and Plan2Explore tests share."""

import dataclasses

from wmrl.planners.actor_critic import ActorCriticConfig
from wmrl.planners.methods.dreamer import DreamerConfig
from wmrl.worldmodels.categorical_rssm import CategoricalRSSMConfig

MODEL = CategoricalRSSMConfig(
    deter=8, hidden=8, stoch=3, classes=4, cnn_depth=4, mlp_layers=1, mlp_units=8
)


def tiny(logdir, **overrides) -> DreamerConfig:
    """State observations, cartpole at repeat 8 (125 policy steps, 1000 env steps per
    episode), tiny nets: one prefill episode, then one training episode per 1000 env steps of
    budget."""
    cfg = DreamerConfig(
        env="dmc:cartpole-swingup",
        obs_type="state",
        action_repeat=8,
        logdir=str(logdir),
        device="cpu",
        steps=2000,
        prefill=100,
        pretrain=2,
        train_every=50,
        batch_size=3,
        batch_length=8,
        eval_every=10_000,
        model=MODEL,
        ac=ActorCriticConfig(horizon=3, layers=1, units=8, slow_target_update=3),
    )
    return dataclasses.replace(cfg, **overrides)
