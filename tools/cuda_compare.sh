#!/usr/bin/env bash
# The CUDA check of issue 10 (and the GPU numbers of issue 14), on a machine with a GPU:
#   tools/cuda_compare.sh OUTDIR [SECONDS]
# 1. F_bio and F_Oja (their committed recipes, 10 seeds x 500 episodes) meta-trained on CUDA,
#    side by side, each stopped after SECONDS (default 420) with its last checkpoint kept
#    (continue with `plast meta-train ... --resume`);
# 2. meanwhile tests/test_cuda.py (the fast reverse pass on CUDA against CPU autograd in
#    float64; a CUDA run against the CPU run) and bench/bench_meta_train.py on CUDA.
# OUTDIR gets gpu.txt, tests.txt, bench.txt, one .log and one .h5 per recipe; copy the stores
# to results/2022/cuda/ and `plast figures --paper 2022` compares their claims with the CPU's.
# Needs: plast importable (pip install -e . or PYTHONPATH=.), $PLAST_DATA with emnist/.
set -uo pipefail
out=${1:?usage: tools/cuda_compare.sh OUTDIR [SECONDS]}
limit=${2:-420}
py=${PYTHON:-python3}
mkdir -p "$out"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$out/gpu.txt"
work=$(mktemp -d)
pids=()
for r in fig5-bio fig8-oja; do
  timeout "$limit" $py -m plastcli meta-train "recipes/2022/$r.yaml" --device cuda \
    --out "$work/$r.h5" >"$out/$r.log" 2>&1 &
  pids+=($!)
done
$py -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15 | tee "$out/tests.txt"
$py bench/bench_meta_train.py --device cuda --sizes 1 16 --episodes 5 2>&1 | tee "$out/bench.txt"
for p in "${pids[@]}"; do wait "$p"; echo "run $p exit $?" | tee -a "$out/tests.txt"; done
cp "$work"/*.h5 "$out/" 2>/dev/null
tail -n 3 "$out"/*.log
