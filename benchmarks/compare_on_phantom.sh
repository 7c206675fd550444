#!/usr/bin/env bash
# All six methods on the same phantom test volumes, CPU-sized schedules, then one `normnet compare` table
# (README, "All methods on the phantom"). Usage: bash benchmarks/compare_on_phantom.sh [OUTPUT_DIR]
# Needs .venv (make install). Takes about 45 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/phantom-comparison}
NORMNET=.venv/bin/normnet
# The normnet_quick phantom for every method: 3 COVID-like test volumes of 160 x 160 x 72 at 2 x 2 x 3 mm;
# the methods that train on labelled volumes get 4 other COVID-like phantoms (data.train).
PHANTOM="data.phantom.covid_volumes=3 data.phantom.spacing=[2.0,2.0,3.0] data.phantom.size=[160,160,72]
         data.phantom.train_volumes=4 output_dir=$OUT logging.wandb=false data.num_workers=0"
QUICK_GRID="preprocessing.spacing=[3.2,3.2,4.0] preprocessing.in_plane_size=[128,128] data.slab=[8,128,128]"

run() {   # run EXPERIMENT OVERRIDES...: train, print the run folder
    local experiment=$1; shift
    $NORMNET train "$experiment" $PHANTOM "$@" >"$OUT/$experiment.log" 2>&1
    ls -d "$OUT/$experiment"/train-* | tail -1
}

mkdir -p "$OUT"
runs=()
runs+=("$(run normnet_quick)")
runs+=("$(run threshold)")                       # its own grid: NormNet's 0.8 x 0.8 x 1 mm
runs+=("$(run cyclegan preprocessing.spacing=[2.0,2.0,3.0] preprocessing.in_plane_size=[192,192] data.slab=[32,192,192] \
          cyclegan.stages=6 cyclegan.base_channels=16 cyclegan.crop=128 cyclegan.epochs=3 cyclegan.schedule_epochs=3 cyclegan.decay_epochs=2 \
          cyclegan.val_every=3)")
runs+=("$(run unet3d $QUICK_GRID unet3d.patch=[96,96,32] unet3d.channels=[16,32,64,128,256] unet3d.max_epochs=15 \
          unet3d.batches_per_epoch=20)")
runs+=("$(run infnet $QUICK_GRID infnet.epochs=3 infnet.val_every=3)")
runs+=("$(run semi_infnet $QUICK_GRID infnet.epochs=1 infnet.val_every=1 semi.max_unlabelled=10 semi.round_epochs=1 \
          semi.pretrain_epochs=1 semi.finetune_epochs=1)")
$NORMNET compare "${runs[@]}" --output "$OUT/table"
