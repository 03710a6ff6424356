#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu.py needs on the GPU machine, which has jax,
# flax, torch, optax, numpyro, jaxtyping and typing-extensions but not dynamax (nor its
# needs tfp-nightly, decorator, dm-tree, gast) and no network. Run here, in the
# repository root, where pip reaches its index:
#
#     bash benchmarks/gpu_wheels.sh [DEST]      # DEST: default .whl
#
# DEST (when relative) is added to git's info/exclude, so the wheels are never committed; the device
# tool carries them with carry=[".whl"]. The command to run there is in the docstring of
# benchmarks/gpu.py. Pinned: the versions tested with probseq here; --no-deps fetches
# none of their needs, so every missing one is named.
set -euo pipefail
dest="${1:-.whl}"
if [[ "$dest" != /* ]]; then # a folder in the repository: keep it out of git
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "/${dest#./}/" "$exclude" 2>/dev/null || echo "/${dest#./}/" >>"$exclude"
fi
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$dest" \
    dynamax==1.0.3 tfp-nightly==0.26.0.dev20261027 decorator==5.3.1 dm-tree==0.1.10 \
    gast==0.7.0
ls -l "$dest"
