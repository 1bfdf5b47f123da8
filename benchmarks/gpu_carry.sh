#!/usr/bin/env bash
# Packs the Python packages that the GPU image lacks (grain, array-record, ml-collections,
# tensorboardX, portpicker; Python 3.12, x86-64) into .whl/site.tar.xz for `gpu_suite.sh`.
# The device tool sends at most 64 MiB of working tree and the tracked files take ~60 MiB, so
# the wheels are unpacked, their shared objects stripped, test files dropped and the rest
# xz-compressed: ~3 MB instead of ~4.7 MB of wheels. Needs pip, strip and xz; run it here once:
#
#   bash benchmarks/gpu_carry.sh        # then: device run, carry [".whl"], gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$tmp/wheels" \
  grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 tensorboardX==2.6.5 portpicker==1.6.0
mkdir "$tmp/site"
for w in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tmp/site"; done
find "$tmp/site" -name '*.so' -exec strip --strip-unneeded {} +
find "$tmp/site" -depth -type d \( -name tests -o -name testdata -o -name beam \) -exec rm -rf {} +
find "$tmp/site" -name '*_test.py' -delete
mkdir -p .whl
tar -C "$tmp/site" -cf - . | xz -9e -T2 > .whl/site.tar.xz.tmp
mv .whl/site.tar.xz.tmp .whl/site.tar.xz
ls -la .whl/site.tar.xz
