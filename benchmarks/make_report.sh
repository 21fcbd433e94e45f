#!/usr/bin/env bash
# Regenerate the seed's report in one command: the three sweeps (activation, learning rate,
# patch size) and the two best models, then `zoo report` over all of them.
#
#   benchmarks/make_report.sh                       # quick: Fashion-MNIST on a CPU, subsets and
#                                                   # short schedules (12 min measured on 2 CPU cores)
#   PROFILE=full DEVICE=cuda benchmarks/make_report.sh   # CIFAR-10, the recipes' full schedules
#
# Variables (defaults in brackets):
#   PROFILE        quick | full                                   [quick]
#   DEVICE         cpu | cuda | auto                              [cpu for quick, auto for full]
#   OUT            where runs/ and report/ go                     [runs/make_report_$PROFILE]
#   BENCH_TIME     seconds of timed steps per `zoo report` timing [1]
#   quick only:    EPOCHS_SWEEP [2], BATCHES_SWEEP [10], EPOCHS_BEST [3], BATCHES_BEST [8],
#                  VALID [1000] (validation images), TEST [2000] (test images)
#
# Fashion-MNIST images are 28x28, which patches of 8 and 16 do not divide: the quick
# profile sweeps patch sizes 2, 4, 7 and 14 (token grids 14, 7, 4, 2, as 2/4/8/16 give on
# 32x32). Fashion-MNIST is read from /usr/share/datasets/fashion-mnist or $ZOO_DATA.
set -euo pipefail

PROFILE=${PROFILE:-quick}
OUT=${OUT:-runs/make_report_$PROFILE}
BENCH_TIME=${BENCH_TIME:-1}
RUNS="$OUT/runs"
cd "$(dirname "$0")/.."

case "$PROFILE" in
  quick)
    DEVICE=${DEVICE:-cpu}
    common=(--device "$DEVICE" --force
            --set data.dataset=fashion_mnist
            --set "data.valid_size=${VALID:-1000}" --set "data.test_subset=${TEST:-2000}")
    sweep=("${common[@]}" --set "epochs=${EPOCHS_SWEEP:-2}"
           --limit-train-batches "${BATCHES_SWEEP:-10}")
    best=("${common[@]}" --set "epochs=${EPOCHS_BEST:-3}"
          --limit-train-batches "${BATCHES_BEST:-8}")
    patch=(--set 'sweep={model.args.patch_size: [2, 4, 7, 14]}')
    ;;
  full)
    DEVICE=${DEVICE:-auto}
    sweep=(--device "$DEVICE" --force)
    best=("${sweep[@]}")
    patch=()
    ;;
  *)
    echo "PROFILE must be quick or full, got '$PROFILE'" >&2
    exit 2
    ;;
esac

start=$SECONDS
train() {  # train RECIPE OUT_NAME ARGS...
  local recipe=$1 name=$2
  shift 2
  echo "== zoo train recipes/$recipe.yaml -> $RUNS/$name ($((SECONDS - start)) s so far)" >&2
  zoo train "recipes/$recipe.yaml" --out "$RUNS/$name" "$@"
}

train mlp_activations mlp_activations "${sweep[@]}"
train resnet18_lr resnet18_lr "${sweep[@]}"
train mixer_patch mixer_patch "${sweep[@]}" "${patch[@]}"
train resnet18_best resnet18_best "${best[@]}"
train mixer_best mixer_best "${best[@]}"
echo "== training done in $((SECONDS - start)) s; writing the report" >&2

report_device=$DEVICE
[ "$report_device" = auto ] && report_device=$(python -c \
  "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
zoo report "$RUNS" --out "$OUT/report" --device "$report_device" --bench-time "$BENCH_TIME"
echo "== $OUT/report/report.md written in $((SECONDS - start)) s" >&2
