#!/usr/bin/env bash
# The real-engine test tier's engine: llama.cpp's OpenAI server (llama-cpp-python[server]), CPU only.
# Built once into a cache outside the repo, keyed by version: ~5-10 min cold on 2 cores (5 min 15 s measured), seconds after.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
CACHE=${HOMELAB_CACHE:-$HOME/.cache/homelab}/wheels/llama-cpp-python-$VERSION
if .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  exit 0
fi
if ! ls "$CACHE"/llama_cpp_python-$VERSION-*.whl >/dev/null 2>&1; then
  echo "install-engine: building llama-cpp-python $VERSION (CPU only, once; ~5-10 min on 2 cores) into $CACHE" >&2
  mkdir -p "$CACHE"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    .venv/bin/python -m pip wheel -q --no-deps "llama-cpp-python==$VERSION" -w "$CACHE" 2>&1 | grep -v '^WARNING: Location' || true
fi
.venv/bin/python -m pip install -q --find-links "$CACHE" "llama-cpp-python[server]==$VERSION" 2>&1 \
  | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import llama_cpp.server" # fail loudly if the install did not take
