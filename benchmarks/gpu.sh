#!/usr/bin/env bash
# The GPU path in one command (about 10 minutes on a GPU node): features on the real-size
# slides, profile for ZoomMIL and ABMIL, ZoomMIL predict over 4 copies of the 40x slide, one
# training epoch; JSON under results/benchmarks/gpu/.
# Without a GPU, or with --dry, a CPU dry mode on tiny sizes (what CI runs): same steps,
# JSON under results/benchmarks/gpu-dry/. Extra arguments go to benchmarks/gpu.py.
# A run first removes the previous run's JSONs; each JSON names its run (run_id, started),
# and summary.json, written last, lists the steps: without it, the run stopped part-way.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
exec "$python" benchmarks/gpu.py "$@"
