"""Train PlaNet (Hafner et al. 2019): an RSSM world model with CEM-MPC planning, online.

    python scripts/train_planet.py --env dmc:cartpole-swingup --preset smoke --logdir runs/smoke
    python scripts/train_planet.py --env dmc:walker-walk --logdir runs/planet-walker --seed 1
    python scripts/train_planet.py --env dmc:cartpole-swingup --obs-type state --episodes 100 \\
        --model.deter 100 --cem.candidates 500 --logdir runs/planet-state
    python scripts/train_planet.py --logdir runs/planet-walker --resume --episodes 2000

The run directory gets config.json, checkpoint.pt, metrics.jsonl (step = env steps), TensorBoard
events, replay/ (one npz per episode) and gifs/openloop_*.gif (truth / model / |error|).
"""

from wmrl.infra import command, run_main
from wmrl.planners.methods.planet import PRESETS, PlaNetConfig, train_planet


def main(argv=None):
    return run_main(train_planet, PlaNetConfig, PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
