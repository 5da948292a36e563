"""Run offline algorithms x datasets x seeds and tabulate their normalised scores.

    python scripts/compare_offline.py --algos td3bc,iql,cql --seeds 0,1,2 --steps 1000000 \\
        --datasets wmrl/hopper-medium-v0,wmrl/hopper-medium-replay-v0 --logdir runs/compare
    python scripts/compare_offline.py --logdir runs/compare --run false   # tabulate only

Unfinished runs resume; finished ones are read. Writes <out>.md, <out>.csv (normalised score,
mean ± std over seeds, of the last and the best evaluation; steps; wall time) and <out>.png
(learning curves); --out defaults to <logdir>/comparison.
"""

from wmrl.infra import command, parse_config
from wmrl.offline.compare import CompareConfig, compare_offline, markdown


def main(argv=None):
    cfg, _ = parse_config(CompareConfig, argv=argv, description=__doc__)
    table = compare_offline(cfg)
    print(markdown(table))
    return table


if __name__ == "__main__":
    command(main)
