#!/usr/bin/env bash
# The GPU checks of issue 6, as one script for a lent GPU machine (see docs/benchmarks.md):
# the graphed-vs-eager step test, bench/gpu.py, and a real Ray run packing folds on one GPU.
# Expects the dependencies on PYTHONPATH (the .devbundle) and writes its logs under ${OUT:-/tmp}.
set -uo pipefail
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
[ -n "${SKIP_PYTEST:-}" ] || timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_steps.py -o addopts="" 2>&1 | tee "$out/test_steps.log" | tail -5
timeout 300 python3 bench/gpu.py --device cuda --epochs ${BENCH_EPOCHS:-20} --packs ${BENCH_PACKS:-1,2,4,8} --steps 2000 > "$out/gpu_bench.json" 2> "$out/gpu_bench.err"
echo "bench rc=$?"; cat "$out/gpu_bench.json"; tail -5 "$out/gpu_bench.err"
timeout 200 python3 -m orchestrator train --data sp500 --folds 8 --epochs 10 --gpus-per-fold 0.125 \
  --cpus-per-fold 1 --reports-dir /tmp/rep --events-out "$out/ray_gpu_events.jsonl" --quiet > "$out/ray_gpu.log" 2>&1
echo "ray train rc=$?"; tail -5 "$out/ray_gpu.log"
python3 - "$out" <<'PY'
import json, sys, glob
ev = [json.loads(l) for l in open(sys.argv[1] + "/ray_gpu_events.jsonl")]
spans = {}
for e in ev:
    if e["type"] == "epoch_metrics":
        spans.setdefault(e["fold_id"], []).append(e["ts"])
print({k: (round(min(v) % 1000, 2), round(max(v) % 1000, 2)) for k, v in sorted(spans.items())})
s = json.load(open(glob.glob("/tmp/rep/*/summary.json")[0]))
print("devices", {f["device"] for f in s["folds"]}, "val_auc", s["aggregate"]["val_auc"])
PY
