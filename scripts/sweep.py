"""Sweep a training script over a grid or a search space with Ray Tune (the ray extra:
pip install -e ".[ray]"), one trial per run directory, resumable after a kill.

    python scripts/sweep.py --job train_offline --grid "algo=td3bc,iql seed=0,1,2" \\
        --args "--dataset wmrl/hopper-medium-v0 --steps 30000" --logdir runs/sweep-hopper
    python scripts/sweep.py --job train_morel --search "pessimism=uniform(0.5,4)" --samples 8 \\
        --args "--dataset wmrl/halfcheetah-medium-v0" --cpus-per-trial 2 --logdir runs/usad
    python scripts/sweep.py --logdir runs/usad --resume          # after a kill or a Ctrl-C
    python scripts/compare_offline.py --logdir runs/sweep-hopper --run false   # its table

Each trial runs `scripts/<job>.py <args> --<key> <value> ... --logdir <logdir>/<trial>`; a
finished trial is read, never rerun. Writes <logdir>/sweep.md, sweep.csv (best first by
--metric, --mode) and sweep.png. --ray-address joins a running cluster (auto: the one `ray
start` made on this node); without it a local Ray starts with --num-cpus CPUs.
"""

from wmrl.infra import command, parse_config
from wmrl.infra.sweep import SweepConfig, markdown, sweep


def main(argv=None):
    cfg, resume = parse_config(SweepConfig, argv=argv, description=__doc__)
    rows = sweep(cfg, resume=resume)
    print(markdown(rows, cfg.metric))
    return rows


if __name__ == "__main__":
    command(main)
