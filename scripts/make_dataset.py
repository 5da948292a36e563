"""Make D4RL-style datasets (random, medium, medium-replay, medium-expert, expert) from one online
SAC run, as Minari datasets with reference scores (see offline/datagen/make_dataset.py).

    python scripts/make_dataset.py --preset smoke --logdir runs/dataset-smoke
    python scripts/make_dataset.py --env Hopper-v5 --logdir runs/dataset-hopper
    python scripts/make_dataset.py --env HalfCheetah-v5 --sac-steps 3e6 --kinds medium expert \\
        --name wmrl/halfcheetah --logdir runs/dataset-halfcheetah --sac.hidden 256
    python scripts/make_dataset.py --logdir runs/dataset-hopper --resume

Datasets go to Minari's datasets root ($MINARI_DATASETS_PATH, else ~/.minari/datasets) as
<name>-<kind>-v<version> (wmrl/hopper-medium-v0); read them with envs.load_dataset(id) or
minari.load_dataset(id). The run directory gets config.json, checkpoint.pt, metrics.jsonl
(step = env steps) and TensorBoard events of the SAC run.
"""

import json

from wmrl.infra import command, run_main
from wmrl.offline.datagen.make_dataset import PRESETS, MakeDatasetConfig, make_dataset


def main(argv=None):
    return run_main(
        make_dataset,
        MakeDatasetConfig,
        PRESETS,
        __doc__,
        argv,
        show=lambda summary: json.dumps(summary, indent=2),
    )


if __name__ == "__main__":
    command(main)
