#!/usr/bin/env bash
# The GPU checks of issue 22, as one script for a lent GPU machine (docs/benchmarks.md, "Packed
# training on a GPU"): the CUDA tests of the stacked step (graph capture, masks on the device),
# then bench/gpu_study.py: a 100-trial x 5-fold x 25-epoch study of the default architecture on
# one GPU, every batch of trials one stacked model in a CUDA graph (goal: study under 60 s, Ray's
# start reported apart). Expects the dependencies on PYTHONPATH (the .devbundle: run it as
#   bash .devbundle/install-bundle .devbundle && export PYTHONPATH=/tmp/site:$PWD && bash bench/device_pack.sh
# ) and writes its logs under ${OUT:-/tmp}.
set -uo pipefail
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:randomly -o addopts="" \
  tests/test_stacked_cuda.py tests/test_steps.py 2>&1 | tee "$out/test_cuda.log" | tail -5
# a small study first: compiles and captures once, and shows the pipeline works end to end
timeout 120 python3 bench/gpu_study.py --trials 10 --parallel 10 --folds 5 --epochs 5 \
  > "$out/gpu_study_small.json" 2> "$out/gpu_study_small.err"
echo "small rc=$?"; tail -12 "$out/gpu_study_small.json"; tail -3 "$out/gpu_study_small.err"
timeout 400 python3 bench/gpu_study.py --trials ${TRIALS:-100} --parallel ${PARALLEL:-100} --folds 5 --epochs 25 \
  > "$out/gpu_study.json" 2> "$out/gpu_study.err"
echo "study rc=$?"; cat "$out/gpu_study.json"; tail -5 "$out/gpu_study.err"
