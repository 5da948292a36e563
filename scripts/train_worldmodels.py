"""Train World Models (Ha and Schmidhuber 2018): a ConvVAE (V), an MDN-RNN (M) and a linear
controller (C) searched with CMA-ES, as resumable stages collect, vae, encode, mdnrnn, controller.

    python scripts/train_worldmodels.py --env gym:CarRacing-v3 --preset smoke --logdir runs/wm-smoke
    python scripts/train_worldmodels.py --env gym:CarRacing-v3 --logdir runs/wm-car \\
        --controller.workers 16 --device cuda
    python scripts/train_worldmodels.py --env dmc:cartpole-swingup --preset dream \\
        --logdir runs/wm-cartpole
    python scripts/train_worldmodels.py --logdir runs/wm-car --resume   # skips finished stages
    python scripts/train_worldmodels.py --logdir runs/wm-car --resume --stages controller \\
        --controller.generations 4000   # searches on from the last generation

The run directory gets config.json, checkpoint.pt (finished stages), rollouts/ (one npz per
random episode), vae.pt, series.npz (mu, logvar per frame), mdnrnn.pt, controller.pt,
metrics.jsonl, TensorBoard events and gifs/ (vae_recon: real | VAE; mdnrnn_dream_openloop: truth /
dream / |error|; controller_real, controller_dream).
"""

from wmrl.infra import command, run_main
from wmrl.planners.methods.world_models import PRESETS, WorldModelsConfig, train_worldmodels


def main(argv=None):
    return run_main(train_worldmodels, WorldModelsConfig, PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
