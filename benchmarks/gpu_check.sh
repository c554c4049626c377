#!/usr/bin/env bash
# GPU check, run from the repo root on a machine with CUDA, torch, triton and transformers (it
# installs nothing), in under 9 minutes: the attention, CUDA-graph and Triton-engine tests on the
# card; the roofline table (CUDA graphs with async scheduling on and off, and transformers'
# generate_batch, in one run; what its time budget leaves out is reported as skipped); then each
# kernel kind's share of a decode step and the decode attention kernel's launch settings
# compared (gpu_kernels.py). Results land in $OUT.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
export KSERVE_LLM_CPU_KERNELS=0
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/versions.log"
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 4)
timeout 100 python3 -m pytest tests/engine/test_triton_attention.py tests/engine/test_cuda_graphs.py \
  tests/engine/test_triton_engine.py -q -p no:cacheprovider "${parallel[@]}" 2>&1 | tail -3 | tee "$OUT/pytest.log"
timeout 250 python3 benchmarks/gpu_roofline.py --attention_backends triton --modes cuda_graphs \
  --async_scheduling on,off --time_budget_s 150 --json "$OUT/roofline.json" 2>&1 \
  | grep --line-buffered -v "Loading weights" | grep -v ContinuousBatchingLogger | tee "$OUT/roofline.log" | tail -12
# Batch 64 (the roofline target's) first; kernels.json is rewritten after every batch.
timeout 150 python3 benchmarks/gpu_kernels.py --batch_sizes 64,256,16,1 --time_budget_s 100 \
  --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log" | tail -60
