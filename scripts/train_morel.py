"""Train MOReL (Kidambi et al. 2020) on a Minari dataset: fit the dynamics ensemble, build the
pessimistic MDP with its USAD threshold, and optimise a policy in it with NPG (or, with
--planner cem, plan every real action in it with CEM-MPC).

    python scripts/train_morel.py --dataset wmrl/hopper-medium-v0 --logdir runs/morel
    python scripts/train_morel.py --dataset wmrl-smoke/hopper-medium-replay-v0 --preset smoke \\
        --logdir runs/morel-smoke
    python scripts/train_morel.py --dataset PATH --pessimism 2 --halt_reward penalty \\
        --halt_penalty 100 --ensemble.hidden 256 --npg.update_paths 25 --logdir runs/morel-k100
    python scripts/train_morel.py --logdir runs/morel --resume --iterations 1000
    python scripts/train_morel.py --dataset wmrl/hopper-medium-replay-v0 --planner cem \\
        --cem.candidates 500 --cem.horizon 25 --eval-episodes 4 --logdir runs/morel-cem

Defaults are mjrl's configs/d4rl_hopper_medium.txt: 4 members of (512, 512) fitted 25 epochs,
threshold = max dataset disagreement / pessimism (3.0), HALT reward kappa = 0, horizon 700,
200 model paths (50 x 4 members) per NPG update, 500 iterations, BC initialisation.
The run directory gets config.json, checkpoint.pt, metrics.jsonl (step = NPG iterations;
usad/threshold at step 0; train/, pmdp/halt_fraction, eval/return, eval/normalized_score),
model/metrics.jsonl (step = ensemble epochs) and TensorBoard events. With --planner cem,
metrics.jsonl has one row per real episode (eval/episode_return, pmdp/halt_fraction over every
imagined candidate step) and the means after the last; --resume continues the episodes.
"""

from wmrl.infra import command, run_main
from wmrl.offline.morel.train import PRESETS, MOReLConfig, train_morel


def main(argv=None):
    return run_main(train_morel, MOReLConfig, PRESETS, __doc__, argv)


if __name__ == "__main__":
    command(main)
