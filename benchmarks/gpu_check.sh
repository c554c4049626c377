#!/usr/bin/env bash
# GPU check, run from the repo root on a machine with CUDA, torch, triton and transformers (it
# installs nothing), in under 9 minutes. Results land in $OUT.
#  1. the attention, CUDA-graph and Triton-engine tests on the card;
#  2. gpu_roofline.py: CUDA graphs with async scheduling on and off, and transformers'
#     generate_batch, in one run (what its time budget leaves out is reported as skipped); it
#     comes before the kernel study so that a run cut short still has the headline figures;
#  3. gpu_kernels.py: each kernel kind's share of a decode step, and the decode attention
#     kernel's launch settings compared (batch 64, the roofline target's, first);
#  4. if step 3 found a faster attention launch at batch 64 than the default, the roofline again
#     with it (batch 64 and 256), to confirm it end to end.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
export KSERVE_LLM_CPU_KERNELS=0
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} | tee "$OUT/versions.log"
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 4)
roofline_filter() { grep --line-buffered -v "Loading weights" | grep -v ContinuousBatchingLogger; }

timeout 90 python3 -m pytest tests/engine/test_triton_attention.py tests/engine/test_cuda_graphs.py \
  tests/engine/test_triton_engine.py -q --tb=short -p no:cacheprovider "${parallel[@]}" 2>&1 | tee "$OUT/pytest.log" | tail -25

timeout 230 python3 benchmarks/gpu_roofline.py --attention_backends triton --modes cuda_graphs \
  --async_scheduling on,off --time_budget_s 140 --json "$OUT/roofline.json" 2>&1 \
  | roofline_filter | tee "$OUT/roofline.log" | tail -12

# kernels.json is rewritten after every batch, so a run cut short keeps what it measured.
timeout 110 python3 benchmarks/gpu_kernels.py --batch_sizes 64,256,16,1 --time_budget_s 70 \
  --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log" | tail -50

best=$(python3 benchmarks/gpu_kernels.py --best_launch "$OUT/kernels.json" --batch 64 2>/dev/null)
if [ -n "$best" ]; then
  echo "decode attention launch $best beat the default at batch 64: the roofline with it"
  timeout 100 python3 benchmarks/gpu_roofline.py --attention_backends triton --modes cuda_graphs \
    --async_scheduling on --batch_sizes 64,256 --hf_batch 0 --decode_launch "$best" \
    --json "$OUT/roofline_best_launch.json" 2>&1 | roofline_filter | tee "$OUT/roofline_best_launch.log" | tail -6
fi
