#!/usr/bin/env bash
# Builds llama.cpp, the peer of `mananera bench`, from the copy vendored in the
# llama-cpp-python sdist on PyPI (this machine reaches PyPI, not GitHub), into a cache
# directory kept between runs: llama-bench, llama-quantize, llama-server and llama-cli,
# tuned for this CPU (-DGGML_NATIVE=ON). Prints the directory of the binaries.
#
#   scripts/build_llamacpp.sh          # LLAMACPP_CACHE=~/.cache/mananera-llamacpp by default
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${LLAMACPP_CACHE:-$HOME/.cache/mananera-llamacpp}/$version"
bin="$cache/build/bin"
if [[ -x "$bin/llama-bench" && -x "$bin/llama-quantize" && -x "$bin/llama-server" ]]; then
    echo "$bin"
    exit 0
fi
command -v cmake >/dev/null || { echo "cmake is needed: apt-get install cmake" >&2; exit 1; }
mkdir -p "$cache"
if [[ ! -d "$cache/src" ]]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$cache/sdist" >&2
    mkdir -p "$cache/src"
    tar -xzf "$cache"/sdist/llama_cpp_python-*.tar.gz -C "$cache/src" --strip-components=1
fi
llama="$cache/src/vendor/llama.cpp"
cmake -S "$llama" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$cache/build" -j "$(nproc)" \
    --target llama-bench llama-quantize llama-server llama-cli >&2
echo "$bin"
