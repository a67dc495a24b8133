#!/usr/bin/env bash
# Everything a lent GPU should check, in one call of a few minutes: the CUDA test tier (tests/test_cuda.py: every
# attention block on the GPU against the CPU in fp32 with TF32 off, the bf16 fast paths within their tolerance, every
# head in a real model, a tiny fit with the defaults fit chooses there), then the GPU benchmark rows (the attention
# modules against their naive formulas at 97x97 and 128x256, fp32 and bf16; whole models, ResNet-101-D8 at 769x769,
# batch 8, bf16, channels-last). Run from the repository's root with the package importable:
#
#   PYTHONPATH=src bash bench/gpu_check.sh [OUT_DIR]       # OUT_DIR default: $OUT, else gpu_check/
#
# Each step has its own time limit and writes its log (and the benchmarks their Markdown tables) into OUT_DIR; a step
# that fails or runs out of time does not stop the next. The exit status is the test tier's.
set -u
out=${1:-${OUT:-gpu_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))" \
    2>&1 | tee "$out/versions.txt"

timeout 300 python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.txt"
tests=${PIPESTATUS[0]}

timeout 240 python3 -m bench.attention --device cuda --sizes 97x97 128x256 --modules pam cam cc1 fla \
    --dtypes fp32 bf16 --repeat 3 --out "$out/attention.md" 2>&1 | tee "$out/attention.txt"
timeout 300 python3 -m bench.model --device cuda --heads fcn danet ccnet --encoders resnet101 --sizes 769 \
    --batch 8 --precision bf16-mixed --layouts channels-last --steps 10 --warmup 3 --out "$out/model.md" \
    2>&1 | tee "$out/model.txt"
exit "$tests"
