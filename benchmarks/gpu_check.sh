#!/usr/bin/env bash
# GPU check, run from the repo root on a machine with CUDA, torch, triton and transformers (it
# installs nothing): the attention and CUDA-graph tests on the card, then the roofline table
# (graphs and eager) with transformers' generate_batch in the same run. Results land in $OUT.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
export KSERVE_LLM_CPU_KERNELS=0
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/versions.log"
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 4)
timeout 80 python3 -m pytest tests/engine/test_triton_attention.py tests/engine/test_cuda_graphs.py -q \
  -p no:cacheprovider "${parallel[@]}" 2>&1 | tail -3 | tee "$OUT/pytest.log"
timeout 200 python3 benchmarks/gpu_roofline.py --attention_backends triton --modes cuda_graphs,eager \
  --time_budget_s 170 --json "$OUT/final.json" 2>&1 | grep --line-buffered -v "Loading weights" \
  | grep -v ContinuousBatchingLogger | tee "$OUT/final.log" | tail -14
