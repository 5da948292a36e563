#!/usr/bin/env bash
# The GPU check: one command that shows the pixel main job on a lent GPU (docs/gpu.md).
#
#   scripts/gpu_check.sh                   # on the GPU machine: kit, EGL, benchmark, DreamerV2
#                                          # on pixel cartpole-swingup for 100k env steps
#   scripts/gpu_check.sh --budget smoke    # the same steps at toy sizes, on any CPU (CI runs it)
#   scripts/gpu_check.sh --limit 540       # seconds the whole command may take (default 540,
#                                          # smoke 75): training stops itself (SIGINT) in time
#
# Everything it needs comes from the repository and, where the packages are missing, from the
# kit (.kit/ and .gl/, built by scripts/device_kit.py and carried with the working tree); nothing
# is fetched. It writes at most 8 files to $OUT (default runs/gpu_check): summary.md, log.txt,
# frame.png, benchmark.json, metrics.jsonl, openloop.gif, train.log. Exit 0 when every step ran.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=full
LIMIT=
while [ $# -gt 0 ]; do
    case $1 in
        --budget) BUDGET=${2:-}; shift 2 ;;
        --limit) LIMIT=${2:-}; shift 2 ;;
        -h | --help) sed -n '2,13p' "$0" | cut -c3-; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $BUDGET in full | smoke) ;; *)
    echo "gpu_check.sh: error: --budget must be full or smoke, got '$BUDGET'" >&2; exit 2 ;;
esac
[ -n "$LIMIT" ] || { [ "$BUDGET" = full ] && LIMIT=540 || LIMIT=75; }
case $LIMIT in '' | *[!0-9]*)
    echo "gpu_check.sh: error: --limit takes whole seconds, got '$LIMIT'" >&2; exit 2 ;;
esac

START=$(date +%s)
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
PY=${PYTHON:-python3}
RUN=${GPU_CHECK_RUN:-runs/gpu_check_run}
say() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((LIMIT - ($(date +%s) - START))); }
STATUS=0

# 1. The kit: the packages the GPU image lacks, and the GL loaders for headless EGL.
if ! $PY -c "import mujoco, dm_control, gymnasium, minari, cma" 2>/dev/null; then
    if [ ! -d .kit ]; then
        say "the packages are missing and there is no .kit/: build it here with python scripts/device_kit.py and carry .kit and .gl"
        exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .kit/*.whl 2>&1 | tee -a "$LOG" || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    say "kit installed into /tmp/site ($(du -sh .kit | cut -f1) of wheels)"
fi
if [ -d .gl ] && ! ldconfig -p | grep -q "libEGL.so.1"; then # the GL loaders (glvnd)
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    say "GL loaders unpacked from .gl/"
fi
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$nvidia_egl" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia_egl # the driver's EGL, where it is mounted
fi
if ! $PY -c "import wmrl.envs" 2>/dev/null; then # not installed: the folders under one name
    shim=/tmp/wmrl-shim/wmrl
    mkdir -p "$shim"
    : >"$shim/__init__.py"
    for d in envs worldmodels planners offline infra; do ln -sfn "$PWD/$d" "$shim/$d"; done
    export PYTHONPATH=/tmp/wmrl-shim${PYTHONPATH:+:$PYTHONPATH}
fi
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$BUDGET" = full ] && [ "$DEVICE" != cuda ]; then
    say "no GPU here: --budget full is for a lent GPU (100k pixel env steps); run --budget smoke on a CPU"
    exit 2
fi
say "budget $BUDGET, device $DEVICE, limit ${LIMIT}s, out $OUT"

# 2. EGL: a frame of pixel cartpole-swingup, of the right shape and not black.
$PY - "$OUT/frame.png" <<'PY' 2>&1 | tee -a "$LOG"
import sys
import imageio.v2 as imageio
import numpy as np
from wmrl import envs
env = envs.make("dmc:cartpole-swingup", seed=0)
frame = env.reset()[0]
for _ in range(10):
    frame = env.step(env.action_space.sample())[0]
imageio.imwrite(sys.argv[1], frame)
ok = frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 1
print(f"egl: frame {frame.shape} {frame.dtype}, mean {frame.mean():.1f}, std {frame.std():.1f}: "
      f"{'ok' if ok else 'BAD'}")
sys.exit(0 if ok else 1)
PY
if [ "${PIPESTATUS[0]}" != 0 ]; then
    say "EGL rendering failed: see $LOG; pixels cannot run, stopping"
    exit 1
fi

# 3. The benchmark: render, PlaNet (update, CEM action), DreamerV2 (update eager and compiled).
if [ "$BUDGET" = full ]; then
    BENCH=(--only render,planet,dreamer --device "$DEVICE" --compile --planet-repeats 5
        --dreamer-repeats 10 --render-steps 500 --default-steps 100)
    BENCH_LIMIT=180
else
    BENCH=(--only render,planet,dreamer --device "$DEVICE" --planet-batch 2x8 --dreamer-batch 2x8
        --planet-repeats 1 --dreamer-repeats 1 --render-steps 20 --default-steps 5)
    BENCH_LIMIT=300
fi
say "benchmark: ${BENCH[*]}"
timeout -k 10 "$BENCH_LIMIT" $PY scripts/benchmark.py "${BENCH[@]}" --json "$OUT/benchmark.json" \
    2>&1 | grep -v "^USDT" | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || { say "the benchmark failed or ran past ${BENCH_LIMIT}s"; STATUS=1; }

# 4. Training: pixel DreamerV2 on cartpole-swingup (dmc_vision: action repeat 2, an update every
#    5 policy steps), stopped by SIGINT (a checkpoint, exit 130) before the limit.
if [ "$BUDGET" = full ]; then
    TRAIN=(--env dmc:cartpole-swingup --steps 100000 --device "$DEVICE" --eval-every 5000
        --eval-episodes 5 --gif-every 10 --num-envs "${NUM_ENVS:-1}" --compile "${COMPILE:-false}")
else
    # Smoke sizes, a budget it cannot reach: the time limit stops it, as on the GPU.
    TRAIN=(--env dmc:cartpole-swingup --preset smoke --steps 100000 --eval-every 250
        --device "$DEVICE")
fi
rm -rf "$RUN"
budget=$(($(left) - 15))  # the rest: the checkpoint after the stop, and the summary
if [ "$BUDGET" = smoke ] && [ "$budget" -lt 30 ]; then
    # A dry run must reach its training step: on a loaded CPU the toy benchmark can take most
    # of the 75 s, so the smoke run trains 30 s anyway and ends past its limit.
    budget=30
fi
if [ "$budget" -lt 10 ]; then
    say "only $(left)s left: no time to train"
    STATUS=1
else
    say "train_dreamer.py ${TRAIN[*]} (stops after ${budget}s)"
    timeout -s INT -k 30 "$budget" $PY scripts/train_dreamer.py "${TRAIN[@]}" --logdir "$RUN" \
        >"$OUT/train.log" 2>&1
    code=$?
    case $code in
        0) say "training finished its budget" ;;
        124 | 130) say "training stopped at the time limit (checkpoint saved)" ;;
        *) say "training failed (exit $code): see train.log"; STATUS=1 ;;
    esac
    # The progress bar's redraws make most of the log: keep its last lines.
    tr '\r' '\n' <"$OUT/train.log" | grep -v '^\s*$' | tail -40 >"$OUT/train.log.tmp"
    mv "$OUT/train.log.tmp" "$OUT/train.log"
    [ -f "$RUN/metrics.jsonl" ] && cp "$RUN/metrics.jsonl" "$OUT/"
    # The final model's open-loop prediction of its newest episode, from the checkpoint.
    if $PY scripts/render_gif.py --run "$RUN" --out "$OUT/openloop.gif" --device "$DEVICE" \
        2>&1 | grep -v "^USDT" | tail -1 | tee -a "$LOG"; [ "${PIPESTATUS[0]}" != 0 ]; then
        say "render_gif.py failed"
        STATUS=1
    fi
fi

# 5. The summary.
$PY - "$OUT" "$BUDGET" "$(($(date +%s) - START))" <<'PY' 2>&1 | tee "$OUT/summary.md"
import json, platform, sys
from pathlib import Path
import torch
out, budget, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"# GPU check ({budget} budget)\n")
print(f"- machine: {platform.node()}, GPU {gpu}, torch {torch.__version__}, {seconds} s in all")
log = (out / "log.txt").read_text()
egl = [line for line in log.splitlines() if line.startswith("egl:")]
print(f"- {egl[-1] if egl else 'egl: not run'}")
bench = json.loads((out / "benchmark.json").read_text()) if (out / "benchmark.json").exists() else {}
print("\n## Benchmark\n")
for section, figures in bench.items():
    if section == "render":  # one row per task
        for row in figures:
            print(f"- render {row['task']}: {row['fast_steps_per_s']:.0f} pixel env steps/s "
                  f"({row['speedup']:.1f}x dm-control's default renderer)")
    elif isinstance(figures, dict):
        for name, value in figures.items():
            if isinstance(value, float):
                print(f"- {section} {name}: {value:.4g}")
rows = []
if (out / "metrics.jsonl").exists():
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
train = [r for r in rows if "train/updates_per_s" in r]
evals = [(r["step"], r["eval/return"]) for r in rows if r.get("eval/return") is not None]
print("\n## Training: pixel DreamerV2, dmc:cartpole-swingup\n")
if not rows:
    print("- no metrics written")
else:
    mean = lambda key: sum(r.get(key, 0.0) for r in train) / max(len(train), 1)  # noqa: E731
    updates = int(train[-1]["train/updates"]) if train else 0
    print(f"- env steps reached: {rows[-1]['step']}; updates: {updates}")
    print(f"- over the training episodes: {mean('train/updates_per_s'):.2f} updates/s, "
          f"{mean('train/fps'):.1f} env steps/s, host time in update calls "
          f"{100 * mean('train/update_share'):.0f}%")
    if train and "train/gpu_mem_mib" in train[-1]:
        print(f"- peak GPU memory allocated: {train[-1]['train/gpu_mem_mib']:.0f} MiB")
    print(f"- eval return (the actor's mode) by env step: "
          f"{', '.join(f'{s}: {v:.1f}' for s, v in evals) or 'none yet'}")
    if budget == "full":
        print("- DreamerV2's published return at 100k env steps, pixel cartpole-swingup: about 390")
PY
[ "${PIPESTATUS[0]}" = 0 ] || { say "the summary failed"; STATUS=1; }
say "done (status $STATUS); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $STATUS
