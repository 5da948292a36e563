"""Collect random-policy episodes into a run directory and, optionally, a Minari dataset.

    python scripts/collect.py --env dmc:cartpole-swingup --preset smoke --logdir runs/collect
    python scripts/collect.py --env gym:Hopper-v5 --episodes 100 --logdir runs/hopper-random \\
        --dataset-id wmrl/hopper-random-v0 --ref-max-score 3234
    python scripts/collect.py --logdir runs/collect --resume        # continue an interrupted run
"""

from wmrl.envs.collect import COLLECT_PRESETS, CollectConfig, run_collect
from wmrl.infra import command, run_main


def main(argv=None):
    return run_main(run_collect, CollectConfig, COLLECT_PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
