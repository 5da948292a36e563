"""Train one algorithm of the model-free offline suite on a Minari dataset.

    python scripts/train_offline.py --algo td3bc --dataset wmrl/hopper-medium-v0 --logdir runs/td3bc
    python scripts/train_offline.py --algo iql --dataset wmrl/hopper-medium-v0 --preset smoke \\
        --logdir runs/iql-smoke
    python scripts/train_offline.py --algo cql --dataset PATH --cql.cql_alpha 5 --steps 300000 \\
        --logdir runs/cql --seed 1
    python scripts/train_offline.py --logdir runs/td3bc --resume --steps 2000000

Algorithms: bc, td3bc, cql, iql, awac, rebrac, sacn, edac, sacrnd, dt; each one's settings are
flags under its name (--iql.beta, --rebrac.actor_bc_coef, --sacn.num_critics ...) with CORL's
defaults.
CORL's per-dataset values are applied for the dataset the id names (hopper-medium-v2,
mujoco/hopper/medium-v0, wmrl/hopper-medium-v0 ...) and the run says which; flags given here
win over them, and --corl-preset none keeps the defaults.
The run directory gets config.json, checkpoint.pt, metrics.jsonl (step = gradient steps;
eval/return, eval/normalized_score) and TensorBoard events.
"""

from functools import partial

from wmrl.infra import command, run_main
from wmrl.offline.trainer import PRESETS, OfflineConfig, command_line_fields, train_offline


def main(argv=None):
    train = partial(train_offline, keep=command_line_fields(argv))
    return run_main(train, OfflineConfig, PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
