#!/usr/bin/env bash
# The training comparison in README: mananera (candle) and PyTorch + PEFT in one run, same
# machine, same shape (bigscience/bloom-560m, random weights), LoRA r=8 on all four linear
# layers and full fine-tune, block 256, batch 1, AdamW, gradient clipping.
# Needs the Python environment of scripts/requirements.txt in .venv.
#
#   scripts/bench_training.sh        # STEPS=3 by default; prints JSON lines, then a table
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${STEPS:-3}"
cargo build --release --quiet
out=$(mktemp)
MANANERA_LOG=warn ./target/release/mananera --format json bench-train --steps "$steps" | tee "$out"
.venv/bin/python scripts/bench_training.py --method all --steps "$steps" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("\n| engine | method | tokens/s | s/step | peak RSS MB (training) | peak RSS MB (with build) |")
print("|---|---|---|---|---|---|")
for r in sorted(rows, key=lambda r: (r["method"], r["engine"])):
    print(f"| {r['engine']} | {r['method']} | {r['tokens_per_s']:.1f} | {r['step_s_median']:.2f} | "
          f"{r['peak_rss_mb']:.0f} | {r['peak_rss_incl_build_mb']:.0f} |")
PY
