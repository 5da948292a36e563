"""Train DreamerV2 (Hafner et al. 2021): a categorical RSSM world model and an actor-critic
learning in its imagination, online, with danijar/dreamerv2's dmc_vision settings.

    python scripts/train_dreamer.py --env dmc:cartpole-swingup --preset smoke --logdir runs/smoke
    python scripts/train_dreamer.py --env dmc:walker-walk --logdir runs/dreamer-walker --seed 1
    python scripts/train_dreamer.py --env dmc:cartpole-swingup --preset state \\
        --logdir runs/dreamer-state --steps 200000
    python scripts/train_dreamer.py --logdir runs/dreamer-walker --resume --steps 2000000
    python scripts/train_dreamer.py --env dmc:cartpole-swingup --preset state-cpu \
        --explore plan2explore --explore-steps 30000 --steps 50000 --logdir runs/p2e-cartpole

`--explore plan2explore` (or `random`) lets Plan2Explore's explorer (or uniform random actions)
act for `--explore-steps` env steps (0: the whole budget) while the task actor learns from the
replay; evaluation runs the task actor (docs/plan2explore.md).

The run directory gets config.json, checkpoint.pt, metrics.jsonl (step = env steps), TensorBoard
events, replay/ (one npz per episode) and, for pixels, gifs/openloop_*.gif (truth / model /
|error|).
"""

from wmrl.infra import command, run_main
from wmrl.planners.methods.dreamer import PRESETS, DreamerConfig, train_dreamer


def main(argv=None):
    return run_main(train_dreamer, DreamerConfig, PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
