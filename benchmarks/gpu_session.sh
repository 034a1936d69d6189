#!/usr/bin/env bash
# The GPU checks of this project, in phases that each fit one 10-minute call on a lent GPU
# machine (Python 3.12 with torch; the other packages travel as wheels in ./.whl, fetched here
# with `bash ../shared/gpu/fetch-wheels.sh`). Results go to $OUT (or ./gpu-out).
#
#   bash benchmarks/gpu_session.sh tests            # pytest -m gpu (tests/test_gpu.py), ~3 min
#   bash benchmarks/gpu_session.sh ladder 5,8,9,10  # diffusion ladder rungs (--list numbers them)
#   bash benchmarks/gpu_session.sh ladder 11        # max-autotune compiles alone take minutes
#   bash benchmarks/gpu_session.sh strategies attention,compose [RUNG]   # each strategy end to
#   bash benchmarks/gpu_session.sh strategies gligen,detector [RUNG]     # end (default rung 8)
#   bash benchmarks/gpu_session.sh cvae             # cVAE training crops/s (shipped model) and
#                                                   # the cVAE quickstart build on the GPU
#
# Each phase builds the random-weight SD 1.5 model again: a machine starts bare on each call.
set -euo pipefail
phase=${1:?usage: gpu_session.sh tests|ladder RUNGS|strategies NAMES [RUNG]|cvae}
out=${OUT:-gpu-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/sv-site .whl/*.whl
  export PYTHONPATH=/tmp/sv-site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
case "$phase" in
  tests)
    python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 \
      | tee "$out/gpu-tests.log"
    ;;
  ladder)
    rungs=${2:?ladder needs rung numbers, e.g. 5,8,9}
    python3 benchmarks/diffusion_ladder.py --rungs "$rungs" --out "$out/ladder-${rungs//,/-}.json" \
      2>&1 | grep --line-buffered -v -e "Warning" -e "warn_once" -e "^ *$" \
      | tee "$out/ladder-${rungs//,/-}.log"
    ;;
  strategies)
    names=${2:?strategies needs names, e.g. attention,compose}
    rung=${3:-8}
    python3 benchmarks/diffusion_strategies.py --strategies "$names" --rung "$rung" \
      --out "$out/strategies-${names//,/-}-r$rung.json" 2>&1 \
      | grep --line-buffered -v -e "Warning" -e "warn_once" -e "deprecated" -e "Loading" -e "^ *$" \
      | tee "$out/strategies-${names//,/-}-r$rung.log"
    ;;
  cvae)
    python3 benchmarks/cvae_throughput.py --device cuda --threads 8 --batch-sizes 64,256,1024 \
      --crops 8192 2>&1 | tee "$out/cvae-train.log"
    python3 benchmarks/cvae_throughput.py --device cuda --threads 8 --batch-sizes 256,1024 \
      --crops 8192 --mixed-precision bf16 2>&1 | tee -a "$out/cvae-train.log"
    # decode_batch as configs/quickstart.yaml advises for a GPU (the default 16 suits a CPU)
    python3 benchmarks/build_throughput.py --counts 1000 --set objects.params.device=cuda \
      --set objects.params.decode_batch=128 2>&1 | tee "$out/cvae-build.log"
    ;;
  *)
    echo "unknown phase $phase (tests | ladder RUNGS | strategies NAMES [RUNG] | cvae)" >&2
    exit 2
    ;;
esac
