#!/usr/bin/env bash
# The first thing to run on a lent GPU: LlamaGen GPT-XL at 384 px, random weights, bf16, CFG;
# full cache vs LineAR 1/4 and 1/6 (and streaming, H2O at 1/6); batch 256 and each policy's packed
# maximum; eager vs compiled (CUDA graphs); images/s, peak memory and roofline fractions beside the
# LineAR paper's figures; plus compiled vs eager greedy tokens on a small fp32 model. <= 8 minutes on
# one H100/H200. Writes the table as markdown to $OUT/gpu_check.md ($OUT if set, else benchmarks/).
#
# It needs only python3 with torch (numpy, pillow): no Ray, no boto3, no pip install, and linegen
# need not be installed — linegen.workers, linegen.bench and linegen.benchmarks are imported from this working tree
# through a temporary package folder.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh    # the same script on a CPU with tiny shapes, < 2 minutes
#   PYTHON=.venv/bin/python ...             # another interpreter
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkg="$(mktemp -d)"
trap 'rm -rf "$pkg"' EXIT
mkdir "$pkg/linegen"
cp "$repo/linegen/__init__.py" "$pkg/linegen/__init__.py"
ln -s "$repo/workers" "$pkg/linegen/workers"
ln -s "$repo/benchmarks" "$pkg/linegen/benchmarks"
ln -s "$repo/linegen/bench" "$pkg/linegen/bench"

out_dir="${OUT:-$repo/benchmarks}"
mkdir -p "$out_dir"
args=(--out "$out_dir/gpu_check.md")
if [[ "${SMOKE:-0}" == "1" ]]; then
  args+=(--smoke)
fi
PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" "$repo/benchmarks/gpu_check.py" "${args[@]}" "$@"
