"""Dynamics models behind one protocol (`WorldModel`): see worldmodels/protocol.py."""

from worldmodels.nets import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    mlp,
    postprocess_obs,
    preprocess_obs,
)
from worldmodels.protocol import State, WorldModel
from worldmodels.rssm import RSSM, RSSMConfig, make_optimizer

__all__ = [
    "RSSM",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "RSSMConfig",
    "State",
    "WorldModel",
    "make_optimizer",
    "mlp",
    "postprocess_obs",
    "preprocess_obs",
]
