#!/usr/bin/env bash
# Continued pre-training evidence (issue 31): a generic encoder pre-trained with MAE on one data set
# (the 7,400 clip-art PNGs of 11 openclipart-png categories, 32 px RGB), then continued on a small,
# different one (1,000 Fashion-MNIST images, 28 px grey: 100 per class; 1,000 test images) at an equal
# wall-clock budget per run over 3 seeds: the starting encoder (a baseline of `dmjd compare --init`),
# continued MAE, continued DMJD, and MAE and DMJD from scratch (`dmjd compare` without --init).
#
#   benchmarks/continued_study.sh prepare OUT   # the folders and the source: fixed epochs, may run beside other work
#   benchmarks/continued_study.sh compare OUT   # the two comparisons: wall-clock budgets, run it with the machine alone
#   benchmarks/continued_study.sh summary OUT   # both read together: levels and seed-paired differences
#
# Needs Debian's openclipart-png and dataset-fashion-mnist. Both stages resume when run again.
set -euo pipefail
stage=${1:?usage: benchmarks/continued_study.sh prepare|compare|summary OUT}
out=${2:?usage: benchmarks/continued_study.sh prepare|compare|summary OUT}
budget=${BUDGET:-2m}
here=$(dirname "$0")/..
dmjd=${DMJD:-dmjd}
case $stage in
  prepare)
    # Each folder is written under a .part name and renamed when complete (an interrupted one is redone).
    if [ ! -d "$out/clipart-32" ]; then
      rm -rf "$out/clipart-32.part"
      python "$here/tools/make_clipart_folder.py" "$out/clipart-32.part" --size 32 --per-class 100000
      mv "$out/clipart-32.part" "$out/clipart-32"
    fi
    if [ ! -d "$out/fmnist-1k" ]; then
      rm -rf "$out/fmnist-1k.part"
      python "$here/tools/make_fmnist_folder.py" "$out/fmnist-1k.part"
      mv "$out/fmnist-1k.part" "$out/fmnist-1k"
    fi
    if [ ! -f "$out/source/summary.json" ]; then
      resume=(); [ -d "$out/source" ] && resume=(--resume auto)
      # MAE (random 0.75, one view, norm-pix) on a 4-block, 64-wide ViT with 4 px patches: 100 epochs.
      $dmjd pretrain --config mae-vit-b --output-dir "$out/source" "${resume[@]}" \
        data.path="$out/clipart-32/train" model.size=tiny model.img_size=32 model.patch_size=4 \
        model.embed_dim=64 model.depth=4 model.num_heads=4 model.decoder_dim=64 model.decoder_depth=2 \
        model.decoder_heads=4 optim.batch_size=128 optim.accum_iter=1 optim.epochs=100 optim.warmup_epochs=10 \
        optim.blr=4e-3 data.num_workers=2 train.progress=false monitor.interval=25
    fi
    ;;
  compare)
    $dmjd compare "$out/fmnist-1k" --init "$out/source" --budget "$budget" --seeds 3 --output-dir "$out/continued"
    $dmjd compare "$out/fmnist-1k" --budget "$budget" --seeds 3 --output-dir "$out/scratch"
    python "$here/benchmarks/continued_summary.py" "$out/continued" "$out/scratch"
    ;;
  summary)
    python "$here/benchmarks/continued_summary.py" "$out/continued" "$out/scratch"
    ;;
  *) echo "continued_study.sh: stage must be prepare, compare or summary, not '$stage'" >&2; exit 2 ;;
esac
