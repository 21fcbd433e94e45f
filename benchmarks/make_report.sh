#!/usr/bin/env bash
# Regenerate the seed's report in one command: the three sweeps (activation, learning rate,
# patch size) and the best models, then `zoo report` over all of them.
#
#   PROFILE=cpu benchmarks/make_report.sh      # Fashion-MNIST sized for a 2-core CPU (aims
#                                              # at <= 90 min; ~110 min as measured below)
#   benchmarks/make_report.sh                  # quick: a ~12 min smoke test of every figure
#                                              # and table (accuracies meaningless)
#   PROFILE=full DEVICE=cuda benchmarks/make_report.sh   # CIFAR-10, the recipes' full schedules
#
# Variables (defaults in brackets):
#   PROFILE        quick | cpu | full                             [quick]
#   DEVICE         cpu | cuda | auto                              [cpu for quick/cpu, auto for full]
#   OUT            where runs/ and report/ go                     [runs/make_report_$PROFILE]
#   BENCH_TIME     seconds of timed steps per `zoo report` timing [1]
#   quick only:    EPOCHS_SWEEP [2], BATCHES_SWEEP [10], EPOCHS_BEST [3], BATCHES_BEST [8],
#                  VALID [1000] (validation images), TEST [2000] (test images)
#
# The cpu profile spends its budget where a conclusion is decided (ResNet18 trains at about
# 27 img/s on 2 AMD EPYC cores, 34 min per Fashion-MNIST epoch):
#   activations  MLP relu/tanh/sigmoid, full data (55,000 / 5,000 / 10,000), 10 epochs, cosine
#   lr           ResNet18 at lr 1e-1 ... 1e-5, 2,000 training images x 2 epochs, 1,000 valid,
#                1,000 test: a diverging lr and a too-small one show long before convergence
#   patch        Mixer at patch 4/7/14, full data, 2 epochs. On subsets (6,000 images x 3 epochs)
#                patch 14 beats patch 7 (83.1 vs 77.9 % test): short training favours the model
#                with the fewest tokens, so this sweep needs the full data. Patch 2 (196
#                tokens, ~20 min an epoch here) is left out of this profile.
#   best         ResNet18, full data, 1 epoch, one-cycle; Mixer (patch 7, 256 wide, 4 blocks),
#                full data, 5 epochs, cosine
# No training augmentation in the quick and cpu profiles: short schedules underfit already.
#
# Measured on 2 quiet AMD EPYC cores (2026-11-30, pieces run one by one, not yet end to end):
#   activations  relu 89.75 > tanh 89.42 > sigmoid 88.34 % test, 200 s for all three
#   lr           0.1: 13.2, 0.01: 16.1, 1e-3: 50.2, 1e-4: 45.3, 1e-5: 19.0 % test, 15.5 min
#   patch        4: 85.6 % (90 img/s, 21 min), 7: 84.9 % (250 img/s, 7.6 min),
#                14: 86.4 % (400 img/s, 4.9 min): the largest patch is the MOST accurate after
#                2 epochs on Fashion-MNIST, so the seed's third conclusion does not reproduce at
#                this budget (it is the fastest, as the seed found)
# With ResNet18 best (~37 min for 1 epoch) and the Mixer (~18 min for 5 epochs at patch 7) the
# profile comes to ~110 min, over its 90 min target: what to cut is still open.
#
# Longer patch sweeps, 2 Intel Xeon cores with AMX (precision auto -> bf16, 2.0-2.5x fp32;
# ResNet18 ~180 img/s, Mixer p4 ~650 img/s), 2026-12-06, full data, 5 epochs, cosine:
#   no augmentation      4: 88.44, 7: 88.62, 14: 89.22 % test
#   seed's augmentation  4: 87.05, 14: 87.51 % test (hflip + resized crop 0.8-1.0)
# The largest patch stays the most accurate on Fashion-MNIST at every CPU budget tried, so the
# seed's third conclusion (from CIFAR-10's natural images) looks like a property of that data.
# ResNet18 (resnet18_best, no augmentation, one-cycle over 2 epochs): 85.5 % valid after
# epoch 1 (the run was stopped there); its >= 90 % is not measured yet.
#
# Fashion-MNIST images are 28x28, which patches of 8 and 16 do not divide: the quick and cpu
# profiles sweep patch sizes 2, 4, 7 and 14 (token grids 14, 7, 4, 2, as 2/4/8/16 give on
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
    patch=("${sweep[@]}" --set 'sweep={model.args.patch_size: [2, 4, 7, 14]}')
    act=("${sweep[@]}") lr=("${sweep[@]}") resnet=("${best[@]}") mixer=("${best[@]}")
    note="**PROFILE=quick: a smoke test.** It draws every figure and table of the report from
${EPOCHS_SWEEP:-2} epochs of ${BATCHES_SWEEP:-10} batches per sweep point and ${EPOCHS_BEST:-3} epochs of ${BATCHES_BEST:-8} batches per best model
(${VALID:-1000} validation and ${TEST:-2000} test images): far too little training for the accuracies
or their ranking to mean anything. For the seed's conclusions on a CPU run
\`PROFILE=cpu benchmarks/make_report.sh\`."
    ;;
  cpu)
    DEVICE=${DEVICE:-cpu}
    common=(--device "$DEVICE" --force --set data.dataset=fashion_mnist --set 'data.augment={}')
    act=("${common[@]}" --set epochs=10 --set schedule.name=cosine --set data.batch_size=256)
    lr=("${common[@]}" --set epochs=2 --set data.train_subset=2000
        --set data.valid_size=1000 --set data.test_subset=1000)
    patch=("${common[@]}" --set epochs=5 --set schedule.name=cosine
           --set 'sweep={model.args.patch_size: [4, 7, 14]}')
    resnet=("${common[@]}" --set epochs=2 --set schedule.name=onecycle)
    mixer=("${common[@]}" --set epochs=8 --set schedule.name=cosine
           --set model.args.patch_size=7 --set model.args.embed_dim=256
           --set model.args.num_blocks=4 --set model.args.drop_rate=0.1)
    note="**PROFILE=cpu: the seed's experiments on Fashion-MNIST, budgeted for a 2-core CPU.**
Activation sweep: MLPs on the full data (55,000 train / 5,000 valid / 10,000 test), 10 epochs,
cosine schedule, batch 256. Learning-rate sweep: ResNet18 on 2,000 training images for 2 epochs
(1,000 valid, 1,000 test). Patch-size sweep: Mixer at patch 4, 7 and 14 on the full data for 5
epochs, cosine (patch 2, 196 tokens, is left out). Best models on the full data: ResNet18 for
2 epochs (one-cycle), the Mixer at patch 7 (256 wide, 4 blocks, dropout 0.1) for 8 epochs
(cosine). No augmentation. Precision \`auto\` (bf16 autocast where this CPU runs it >= 1.2x
as fast as fp32, else fp32; each run's summary.json says which).
Patch sizes are 4/7/14 because 28x28 images are not divisible by 8 or 16."
    ;;
  full)
    DEVICE=${DEVICE:-auto}
    sweep=(--device "$DEVICE" --force)
    best=("${sweep[@]}")
    patch=("${sweep[@]}")
    act=("${sweep[@]}") lr=("${sweep[@]}") resnet=("${best[@]}") mixer=("${best[@]}")
    note="**PROFILE=full**: CIFAR-10, the recipes' own schedules."
    ;;
  *)
    echo "PROFILE must be quick, cpu or full, got '$PROFILE'" >&2
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

train mlp_activations mlp_activations "${act[@]}"
train resnet18_lr resnet18_lr "${lr[@]}"
train mixer_patch mixer_patch "${patch[@]}"
train resnet18_best resnet18_best "${resnet[@]}"
train mixer_best mixer_best "${mixer[@]}"
trained=$((SECONDS - start))
echo "== training done in $trained s; writing the report" >&2
cpu_model=$(python -c "from zoo.env import device_name; print(device_name('$DEVICE'))")
note="$note

Training took $((trained / 60)) min $((trained % 60)) s on $DEVICE ($cpu_model)."

report_device=$DEVICE
[ "$report_device" = auto ] && report_device=$(python -c \
  "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
zoo report "$RUNS" --out "$OUT/report" --device "$report_device" --bench-time "$BENCH_TIME" \
  --note "$note"
echo "== $OUT/report/report.md written in $((SECONDS - start)) s" >&2
