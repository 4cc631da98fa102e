#!/usr/bin/env bash
# The device checks, as one script: gpu-marked tests plus the GPU benchmarks. Run on a lent H100/H200 with the
# wheels of .whl/ (packages missing from the device image; `python scripts/gpu_wheels.py` fetches them) carried along;
# results land in $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
for b in ${GPU_BENCHES:-patching}; do
  case $b in
    patching) timeout 300 python3 benchmarks/patching.py --sizes gpt2-small --out "$OUT/patching-gpu-small.json"
              timeout 200 python3 benchmarks/patching.py --sizes gpt2-medium --tl-subset 384 \
                --out "$OUT/patching-gpu-medium.json" ;;
    *) [ -f "benchmarks/$b.py" ] && timeout 200 python3 "benchmarks/$b.py" --out "$OUT/$b-gpu.json" ;;
  esac
done
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu ${GPU_TESTS:-tests/test_gpu.py} 2>&1 | tail -30 \
  | tee "$OUT/gpu-tests.log"
