#!/usr/bin/env bash
# The GPU rows of the training-throughput table, and whether bf16 keeps the demo's accuracy.
#
# For a maintainer on a machine with an NVIDIA GPU (CI has none, so this is never run there). From the repository
# root, with mela installed from this checkout and a CUDA build of torch (e.g. `make demo TORCH=torch` first):
#
#     bash benchmarks/gpu_check.sh                 # a few minutes on one H100
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# 1. benchmarks/train_throughput.py --device cuda: images/s of the episodic (learn_meta_repr) and supervised
#    (pre-training) steps, convnet4 at 32 px and resnet12 at 84 px, fp32 / fp32 + channels_last / bf16 /
#    bf16 + channels_last -> benchmarks/results/train_throughput_cuda.{json,md}. channels_last=auto turns the
#    layout on for every convolutional backbone on CUDA; if a row here says it is slower, change
#    channels_last_auto in src/mela/engine/precision.py.
# 2. The demo pipeline (`mela pipeline`, glyphs, convnet4) twice in a scratch workspace, precision=fp32 and
#    precision=bf16: the two accuracy tables go to benchmarks/results/gpu_check_demo.txt. bf16 must stay within
#    the fp32 run's 95 % CIs.
# 3. benchmarks/labeler_scale.py on 20,000 ragged tasks of 10,000 classes (about 110,000 keys; the centroids grow
#    from K=400 to ~10,000), the key-centroid distances on the GPU and then on the CPU, same pile, same machine
#    -> benchmarks/results/labeler_scale.json (rows keyed by device; centroids_sha1 says whether they agree).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=benchmarks/results/gpu_check_demo.txt

"$PYTHON" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check.sh needs a CUDA GPU: torch.cuda.is_available() is False (a CPU build of torch?)")
print(f"{torch.cuda.get_device_name(0)}: bf16 {'supported' if torch.cuda.is_bf16_supported() else 'NOT supported'}, "
      f"torch {torch.__version__}")
EOF

"$PYTHON" benchmarks/train_throughput.py --device cuda

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
{
  echo "# demo pipeline on $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))'), $(date -u +%F)"
  for precision in fp32 bf16; do
    echo "## precision=$precision"
    WORKSPACE="$SCRATCH" "$PYTHON" -m mela.cli pipeline device=cuda precision="$precision" \
      run_name="demo_$precision" progress=false 2>/dev/null | grep -v "^/" | tail -n 9
  done
} | tee "$OUT"
for device in cuda cpu; do
  "$PYTHON" benchmarks/labeler_scale.py --device "$device" --tasks 20000 --classes 10000
done
echo "wrote $OUT, benchmarks/results/train_throughput_cuda.{json,md} and benchmarks/results/labeler_scale.json"
