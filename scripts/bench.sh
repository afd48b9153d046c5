#!/usr/bin/env bash
# The speed comparison in README: mananera and Hugging Face transformers in one run, same
# machine, same shape (bigscience/bloom-560m, random weights), batch 1, 64-token prompt,
# 128 new tokens. Needs the Python environment of scripts/requirements.txt in .venv.
#
#   scripts/bench.sh            # prints JSON lines, then a markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
cargo build --release --quiet
out=$(mktemp)
MANANERA_LOG=warn ./target/release/mananera bench --runs "$runs" --format json | tee "$out"
.venv/bin/python scripts/bench_transformers.py --dtype all --runs "$runs" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = {"none": "f32", "q8_0": "Q8_0", "q4k": "Q4_K", "f32": "f32", "bf16": "bf16"}
print("\n| engine | precision | prefill tok/s | decode tok/s | peak RSS MB |")
print("|---|---|---|---|---|")
for r in rows:
    print(f"| {r['engine']} | {names.get(r['precision'], r['precision'])} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | {r['peak_rss_mb']:.0f} |")
PY
