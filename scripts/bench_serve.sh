#!/usr/bin/env bash
# The daemon's load benchmark in README: a random checkpoint of bigscience/bloom-560m's shape
# (no download), served with Q8_0 by `mananera serve`, loaded by scripts/bench_serve.py at 1,
# 4 and 8 concurrent requests, then cache hits. Standard-library Python only.
#
#   scripts/bench_serve.sh        # JSON lines, then a markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/mananera"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
MANANERA_LOG=warn "$bin" random-model "$work/bloom-560m-random" >/dev/null
MANANERA_LOG=warn "$bin" serve --model "$work/bloom-560m-random" --quantization q8_0 \
    --listen 127.0.0.1:0 --set serve.state_dir="\"$work/state\"" \
    --set 'limits.admins=["web:127.0.0.1"]' --set queue.max_batch=8 >"$work/out" &
pid=$!
until grep -q "listening on" "$work/out" 2>/dev/null; do sleep 0.2; done
url=$(sed -n 's/^mananera listening on //p' "$work/out")
until curl -sf "$url/readyz" >/dev/null; do sleep 0.5; done
python3 scripts/bench_serve.py --url "$url" "$@"
