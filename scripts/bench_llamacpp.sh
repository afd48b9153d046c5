#!/usr/bin/env bash
# Generation speed of mananera against llama.cpp in one run, same machine, same checkpoint:
# bigscience/bloom-560m's shape with random weights (`mananera random-model`), written as GGUF
# by `mananera export --gguf` (f32, f16) and quantized by llama.cpp's own llama-quantize
# (Q8_0, Q4_0 for every tensor), 2 threads, 64-token prompt, 128 new tokens. llama.cpp is
# built from the PyPI sdist by scripts/build_llamacpp.sh (cached). Prints JSON lines, then
# a markdown table with the ratios.
#
#   scripts/bench_llamacpp.sh        # RUNS=3, WORK=/tmp/mananera-bench-llamacpp
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
work="${WORK:-/tmp/mananera-bench-llamacpp}"
bin="$(scripts/build_llamacpp.sh)"
cargo build --release --quiet
mananera=./target/release/mananera
mkdir -p "$work"
model="$work/bloom-560m-random"
[[ -f "$model/model.safetensors" ]] || MANANERA_LOG=warn "$mananera" random-model "$model" >&2
for kind in f32 f16; do
    [[ -f "$work/$kind.gguf" ]] || MANANERA_LOG=warn "$mananera" export --gguf --gguf-type "$kind" --model "$model" base "$work/$kind.gguf" >&2
done
[[ -f "$work/q8_0.gguf" ]] || "$bin/llama-quantize" "$work/f16.gguf" "$work/q8_0.gguf" Q8_0 2 >&2
[[ -f "$work/q4_0.gguf" ]] || "$bin/llama-quantize" --pure "$work/f16.gguf" "$work/q4_0.gguf" Q4_0 2 >&2
out="$work/results.jsonl"
: > "$out"
for kind in f32 f16 q8_0 q4_0; do
    "$bin/llama-bench" -m "$work/$kind.gguf" -t 2 -p 64 -n 128 -r "$runs" -o jsonl 2>/dev/null |
        python3 -c '
import json, sys
kind = sys.argv[1]
for line in sys.stdin:
    r = json.loads(line)
    phase = "prefill" if r["n_prompt"] else "decode"
    print(json.dumps({"engine": "llama.cpp", "precision": kind, phase + "_tok_s": r["avg_ts"]}))
' "$kind" | tee -a "$out"
done
MANANERA_LOG=warn "$mananera" bench --threads 2 --runs "$runs" --format json | tee -a "$out"
python3 - "$out" "$work" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = {"none": "f32", "f32": "f32", "f16": "f16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4k": "Q4_K"}
table = {}
for r in rows:
    key = (r["engine"].split(" ")[0], names.get(r["precision"], r["precision"]))
    cell = table.setdefault(key, {})
    for field in ("prefill_tok_s", "decode_tok_s", "bytes_per_token", "stream_read_gb_s"):
        if field in r:
            cell[field] = r[field]
print("\n| precision | mananera prefill | llama.cpp prefill | ratio | mananera decode | llama.cpp decode | ratio |")
print("|---|---|---|---|---|---|---|")
for precision in ["f32", "f16", "Q8_0", "Q4_0", "Q4_K"]:
    ours, theirs = table.get(("mananera", precision), {}), table.get(("llama.cpp", precision), {})
    if not ours and not theirs:
        continue
    def cell(d, f):
        return f"{d[f]:.1f}" if f in d else "—"
    def ratio(f):
        return f"{ours[f] / theirs[f]:.2f}×" if f in ours and f in theirs else "—"
    print(f"| {precision} | {cell(ours, 'prefill_tok_s')} | {cell(theirs, 'prefill_tok_s')} | {ratio('prefill_tok_s')} "
          f"| {cell(ours, 'decode_tok_s')} | {cell(theirs, 'decode_tok_s')} | {ratio('decode_tok_s')} |")
# Bytes a decoded token reads: mananera counts its matrices; llama.cpp's GGUF file is its
# weights (the tied head read whole each token, the embedding one row).
files = {"f32": "f32.gguf", "f16": "f16.gguf", "Q8_0": "q8_0.gguf", "Q4_0": "q4_0.gguf"}
stream = next((c["stream_read_gb_s"] for (e, _), c in table.items() if e == "mananera" and "stream_read_gb_s" in c), None)
if stream:
    print(f"\nMemory: a 2-thread streaming read of this machine does {stream:.1f} GB/s (mananera bench).\n")
    print("| precision | MB read per token, mananera / llama.cpp | mananera GB/s (share) | llama.cpp GB/s (share) |")
    print("|---|---|---|---|")
    for precision in ["f32", "f16", "Q8_0", "Q4_0", "Q4_K"]:
        ours, theirs = table.get(("mananera", precision), {}), table.get(("llama.cpp", precision), {})
        if "bytes_per_token" not in ours:
            continue
        ob = ours["bytes_per_token"]
        og = ob * ours["decode_tok_s"] / 1e9
        path = os.path.join(sys.argv[2], files.get(precision, ""))
        if precision in files and os.path.exists(path) and "decode_tok_s" in theirs:
            tb = os.path.getsize(path)
            tg = tb * theirs["decode_tok_s"] / 1e9
            their_cells = f"{tb / 1e6:.0f} | {og:.1f} ({og / stream:.0%}) | {tg:.1f} ({tg / stream:.0%})"
        else:
            their_cells = f"— | {og:.1f} ({og / stream:.0%}) | —"
        print(f"| {precision} | {ob / 1e6:.0f} / {their_cells} |")
PY
