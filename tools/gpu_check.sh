#!/usr/bin/env bash
# GPU check in one call: install detkit without dependencies into the machine's torch
# environment, run the CUDA tests, the benchmark on the GPU, the training throughput at
# fp32/fp16/bf16 and a BCCD training run (box AP after BCCD_MINUTES, default 2).
#
#   bash tools/gpu_check.sh OUT_DIR [BCCD_MINUTES] [DEMO_MINUTES]
#
# Expects: pycocotools wheels in .whl/ (no registry on the GPU machine) and the shared
# data sets in $DETKIT_DATA (default ../shared/data).
set -uo pipefail
out=${1:-gpu_out}
minutes=${2:-2}
demo_minutes=${3:-2}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || {
  echo "editable install failed; using PYTHONPATH"; export PYTHONPATH="${PYTHONPATH:-}:$PWD:$PWD/plugins"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"

echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.log" | tail -5

echo "== benchmark (GPU): batch 1 and 8, fp32 and bf16, inference and training"
bench() { python3 -m detkit.cli benchmark fasterrcnn_resnet50_fpn --against torchvision --device cuda "$@" 2>&1 | tail -4; }
bench --runs 20 --warmup 3 --out "$out/bench_cuda_b1.json"
bench --runs 10 --warmup 3 --batch-size 8 --channels-last --out "$out/bench_cuda_b8.json"
bench --runs 10 --warmup 3 --batch-size 8 --channels-last --precision bf16 --out "$out/bench_cuda_b8_bf16.json"
bench --runs 10 --warmup 3 --batch-size 8 --train --out "$out/bench_cuda_train_b8.json"

echo "== demo on the GPU ($demo_minutes min of training)"
python3 -m detkit.cli -q demo --out "$out/demo" --device cuda "train.max_minutes=$demo_minutes" data.workers=4 2>&1 | tail -8
rm -rf "$out/demo/data" "$out/demo/detections" "$out"/demo/*.pt

echo "== training throughput on BCCD (fp32, fp16, bf16)"
python3 tools/train_throughput.py configs/bccd_faster_rcnn.yaml --device cuda --precisions fp32 fp16 bf16 \
  --warmup 10 --iters 50 --out "$out/throughput.json" train.batch_size=16 data.workers=8 \
  "data.train.root=${DETKIT_DATA:-../shared/data}/BCCD" "data.val.root=${DETKIT_DATA:-../shared/data}/BCCD" 2>&1 | tail -5

echo "== BCCD training on the GPU ($minutes min)"
python3 -m detkit.cli -q train configs/bccd_faster_rcnn.yaml --device cuda \
  "data.train.root=${DETKIT_DATA:-../shared/data}/BCCD" "data.val.root=${DETKIT_DATA:-../shared/data}/BCCD" \
  train.epochs=200 train.batch_size=16 train.lr=0.04 train.warmup_iters=100 train.eval_period=10 \
  "train.max_minutes=$minutes" data.workers=8 "output.dir=$out/bccd" 2>&1 | tail -25
rm -f "$out"/bccd/*.pt
