#!/usr/bin/env bash
# Repack onnxruntime-gpu for the device machine's 64 MiB-per-call transfers (run here, from the repo root).
#
#   bash ../shared/gpu/prepare-ort-gpu.sh        # downloads the wheel into .ortgpu1..5 (parts of 52 MB)
#   bash bench/gpu/pack_ort_gpu.sh [PART_BYTES]   # -> .ortgpu1..N: one tar.xz (~202 MB), N parts
#
# The wheel (244 MB) is mostly libonnxruntime_providers_cuda.so; xz -9 packs the package without the
# TensorRT provider and the tools/quantization/transformers Python code into ~202 MB, i.e. 4 parts of 58 MB.
# The travelling tree (git-tracked files + untracked non-ignored ones) counts too: with 58 MB parts it must
# stay under ~6 MB, so for the upload calls the big tracked folders are taken out of the index and put back:
#     git rm -r -q --cached models/fixtures onnxplain/data      # before the first upload call
#     ...  4 calls: mkdir -p /tmp/ortgpu && cp .ortgpuN/* /tmp/ortgpu/   (carry .ortgpuN; back to back,
#          the machine goes after 30 s idle); the last one also runs the benchmark (carry .ortgpu4 and .whl):
#          cat /tmp/ortgpu/part-* > /tmp/ort.tar.xz && mkdir -p /tmp/site &&
#          python3 -c "import tarfile; tarfile.open('/tmp/ort.tar.xz').extractall('/tmp/site')" &&
#          ORTGPU=/none bash bench/gpu/device_run.sh
#     git reset -q -- models/fixtures onnxplain/data            # right after
# (onnxplain/data must be in the working tree for the last call: it travels as untracked files then.)
set -euo pipefail
part=${1:-58000000}
top=$(git rev-parse --show-toplevel); cd "$top"
work=$(mktemp -d)
cat .ortgpu*/part-* > "$work/w.whl"
mkdir "$work/pkg" && (cd "$work/pkg" && python3 -m zipfile -e ../w.whl . )
rm -rf "$work/pkg/onnxruntime/capi/libonnxruntime_providers_tensorrt.so" "$work/pkg/onnxruntime/tools" \
       "$work/pkg/onnxruntime/quantization" "$work/pkg/onnxruntime/transformers"
tar -C "$work/pkg" -cf - . | xz -T2 -9 > "$work/ort.tar.xz"
rm -rf .ortgpu*/
(cd "$work" && split -b "$part" -d ort.tar.xz part-)
n=1; for p in "$work"/part-*; do mkdir -p ".ortgpu$n"; mv "$p" ".ortgpu$n/"; n=$((n + 1)); done
sha256sum "$work/ort.tar.xz"; rm -rf "$work"; ls -la .ortgpu*/
