#!/usr/bin/env bash
# The fixed-ETE study of issue 30 on 2 CPU cores: the main section's six configurations (MAE, +DM,
# MAE-block, +DM-block, +JD, DMJD) at 100 ETE per run, 3 seeds, on the clip-art folder and on 2,000
# Fashion-MNIST images. Hours of CPU; resumable: run the same command again (in a later sitting) and
# it continues where it stopped (finished runs kept, the unfinished one resumed from its checkpoint).
# Its figures do not depend on the machine's load, so it may run beside other work (nice'd).
#
#   benchmarks/ete_study.sh OUT [CLIPART_DIR]     # needs Debian's openclipart-png and dataset-fashion-mnist
set -euo pipefail
out=${1:?usage: benchmarks/ete_study.sh OUT [CLIPART_DIR]}
clipart=${2:-$out/clipart-64}
dmjd=${DMJD:-dmjd}
if [ ! -d "$clipart/train" ]; then
  python "$(dirname "$0")/../tools/make_clipart_folder.py" "$clipart"
fi
$dmjd bench --testbed clipart-ete --data-path "$clipart" --output-dir "$out/clipart-ete"
$dmjd bench --testbed fmnist-ete --output-dir "$out/fmnist-ete"
