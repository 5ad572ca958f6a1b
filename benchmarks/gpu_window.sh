#!/bin/bash
# One GPU window for issue 22 (benchmarks/gpu_window.py) on a lent GPU machine, which has PyTorch but neither the
# CIFAR-10 copy nor AutoAttack.
#
#   bash benchmarks/gpu_window.sh kit        here, once: .pylib/ (the installed AutoAttack package, its example
#                                            weights left out) and shared/data/ (the CIFAR-10 JPEG archive); both
#                                            git-ignored, about 20 MB
#   bash benchmarks/gpu_window.sh run [MIN]  there, from the repository root, with carry [".pylib", "shared"]: unpacks
#                                            the data, then checks, times, sizes and computes for MIN minutes (8);
#                                            everything it brings back is in $OUT (gpu-window.json,
#                                            gpu-results.tar.gz, log.txt): unpack the archive at the repository root
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
case "$1" in
  kit)
    py=${PYTHON:-.venv/bin/python}
    src=$("$py" -c "import os, pyautoattack; print(os.path.dirname(pyautoattack.__file__))") || {
      echo "gpu_window.sh: pyautoattack is not installed here (make install)" >&2; exit 2; }
    rm -rf .pylib && mkdir -p .pylib shared/data
    cp -r "$src" .pylib/ && rm -rf .pylib/pyautoattack/examples
    cp "${ADVMOE_SHARED:-../shared}/data/cifar10-jpeg.tar.gz" shared/data/ || exit 2
    du -sh .pylib shared
    ;;
  run)
    [ -d .pylib/pyautoattack ] && [ -f shared/data/cifar10-jpeg.tar.gz ] || {
      echo "gpu_window.sh: carry .pylib and shared (made by: bash benchmarks/gpu_window.sh kit)" >&2; exit 2; }
    export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.pylib:$PWD" ADVMOE_SHARED="$PWD/shared" RAY_USAGE_STATS_ENABLED=0
    OUT=${OUT:-/tmp/gpu-window}
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/log.txt"
    python3 -m advmoe fetch cifar10-jpeg 2>&1 | tee -a "$OUT/log.txt" || exit 2
    python3 benchmarks/gpu_window.py --out "$OUT" --minutes "${2:-8}" 2>&1 | tee -a "$OUT/log.txt"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_window.sh kit | run [MINUTES]" >&2
    exit 2
    ;;
esac
