"""Dynamics models behind one protocol (`WorldModel`): see worldmodels/protocol.py."""

from wmrl.worldmodels.categorical_rssm import (
    CategoricalRSSM,
    CategoricalRSSMConfig,
    kl_balance_loss,
)
from wmrl.worldmodels.disagreement import DisagreementEnsemble
from wmrl.worldmodels.ensemble import DynamicsEnsemble, EnsembleConfig, usad_threshold
from wmrl.worldmodels.gpt import GPT
from wmrl.worldmodels.mdnrnn import MDNRNN, MDNRNNConfig, WorldModels
from wmrl.worldmodels.nets import (
    ConvDecoder,
    ConvEncoder,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    LayerNormGRUCell,
    MLPDecoder,
    MLPEncoder,
    make_optimizer,
    mlp,
    postprocess_obs,
    preprocess_obs,
)
from wmrl.worldmodels.protocol import State, WorldModel
from wmrl.worldmodels.rssm import RSSM, RSSMConfig
from wmrl.worldmodels.trajectory_transformer import (
    Discretizer,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
)
from wmrl.worldmodels.vae import ConvVAE, VAEConfig

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
__all__ += ["MDNRNN", "ConvVAE", "MDNRNNConfig", "VAEConfig", "WorldModels"]
__all__ += ["CategoricalRSSM", "CategoricalRSSMConfig", "LayerNormGRUCell", "kl_balance_loss"]
__all__ += ["DynamicsEnsemble", "EnsembleConfig", "EnsembleLayerNorm", "EnsembleLinear"]
__all__ += ["usad_threshold"]
__all__ += ["DisagreementEnsemble", "EnsembleMLP"]  # Plan2Explore's; the batched member MLP
__all__ += ["GPT"]  # the causal transformer of the sequence models
__all__ += ["Discretizer", "TrajectoryTransformer", "TrajectoryTransformerConfig"]
