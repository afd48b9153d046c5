#!/usr/bin/env bash
# Concurrent speeches written in this process (engine.backend = "local") against the same
# daemon writing them through llama.cpp's llama-server with 8 slots (engine.backend =
# "openai"), in one run on this machine: bigscience/bloom-560m's shape with random weights,
# Q8_0 in both (mananera quantizes at load; the GGUF is quantized by llama-quantize), 2
# threads each, 1/4/8/16 concurrent streamed speeches of 128 tokens (scripts/bench_serve.py).
# llama.cpp is built from the PyPI sdist (scripts/build_llamacpp.sh, cached). Prints JSON
# lines, then one markdown table.
#
#   scripts/bench_backend.sh        # LEVELS=1,4,8,16 NEW_TOKENS=128 WORK=/tmp/mananera-bench-llamacpp
set -euo pipefail
cd "$(dirname "$0")/.."
levels="${LEVELS:-1,4,8,16}"
new_tokens="${NEW_TOKENS:-128}"
work="${WORK:-/tmp/mananera-bench-llamacpp}"
llama="$(scripts/build_llamacpp.sh)"
cargo build --release --quiet
mananera=./target/release/mananera
mkdir -p "$work"
model="$work/bloom-560m-random"
[[ -f "$model/model.safetensors" ]] || MANANERA_LOG=warn "$mananera" random-model "$model" >&2
# random-model's word-level tokenizer turns text llama.cpp reads into no token at all: give
# the same weights a byte-level BPE tokenizer (BLOOM's four specials, the 256 byte tokens, then
# fillers; no merges), so both engines read every prompt as the same bytes.
bytes="$work/bloom-560m-random-bytes"
if [[ ! -f "$bytes/tokenizer.json" ]]; then
    mkdir -p "$bytes"
    ln -f "$model/model.safetensors" "$model/config.json" "$bytes/"
    python3 - "$bytes/tokenizer.json" <<'PY'
import json, sys
def byte_chars():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]
specials = ["<unk>", "<s>", "</s>", "<pad>"]
vocab = specials + byte_chars()
vocab += [f"w{i}" for i in range(len(vocab), 250880)]
tokenizer = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True} for i, t in enumerate(specials)],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": {t: i for i, t in enumerate(vocab)}, "merges": []},
}
json.dump(tokenizer, open(sys.argv[1], "w"), ensure_ascii=False)
PY
fi
model="$bytes"
[[ -f "$work/bytes-f16.gguf" ]] || MANANERA_LOG=warn "$mananera" export --gguf --gguf-type f16 --model "$model" base "$work/bytes-f16.gguf" >&2
[[ -f "$work/bytes-q8_0.gguf" ]] || "$llama/llama-quantize" "$work/bytes-f16.gguf" "$work/bytes-q8_0.gguf" Q8_0 2 >&2
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT

# Starts `mananera serve` with extra arguments; prints its URL once it is ready.
serve() {
    local name="$1"
    shift
    local out="$work/serve-$name.out"
    rm -rf "$work/state-$name"
    MANANERA_LOG=warn MANANERA_NIGHTLY_ENABLED=false "$mananera" serve --model "$model" \
        --listen 127.0.0.1:0 --set serve.state_dir="\"$work/state-$name\"" \
        --set 'limits.admins=["web:127.0.0.1"]' --set queue.capacity=64 "$@" >"$out" &
    pids+=($!)
    until grep -q "listening on" "$out" 2>/dev/null; do sleep 0.2; done
    local url
    url=$(sed -n 's/^mananera listening on //p' "$out")
    until curl -sf "$url/readyz" >/dev/null; do sleep 0.5; done
    echo "$url"
}

stop_all() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
}

bench() {
    python3 scripts/bench_serve.py --url "$1" --levels "$levels" --new-tokens "$new_tokens" --hits 1 "${@:3}" |
        grep '^{"concurrency"' | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r["engine"] = sys.argv[1]
    print(json.dumps(r))
' "$2"
}

out="$work/backend.jsonl"
: > "$out"
url=$(serve local --quantization q8_0 --set queue.max_batch=8)
curl -sf "$url/api/generate" -H 'Content-Type: application/json' \
    -d '{"topic": "calentamiento", "max_new_tokens": 64, "max_words": 0}' >/dev/null
bench "$url" "mananera local" | tee -a "$out"
stop_all

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$llama/llama-server" -m "$work/bytes-q8_0.gguf" --alias mananera --host 127.0.0.1 --port "$port" \
    -np 8 -c $((8 * (new_tokens + 128))) -t 2 >"$work/llama-server.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.5; done
# Warm-up: llama-server maps the GGUF, so its first speech pays the page faults.
curl -sf "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "PRESIDENTE:\nhola", "max_tokens": 64, "ignore_eos": true}' >/dev/null
url=$(serve openai --set engine.backend='"openai"' --set engine.backend_url="\"http://127.0.0.1:$port\"" \
    --set engine.backend_max_concurrent=16)
bench "$url" "mananera → llama-server -np 8" | tee -a "$out"
# The peer alone: the same speeches asked of llama-server's own API (EOS ignored, as the
# random model's speeches run to max_tokens anyway).
bench "http://127.0.0.1:$port" "llama-server -np 8 alone" --openai mananera | tee -a "$out"
stop_all

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["concurrency"], {})[r["engine"]] = r
local, remote, alone = "mananera local", "mananera → llama-server -np 8", "llama-server -np 8 alone"
single = {e: by[min(by)][e]["total_tok_s"] for e in (local, remote, alone)}
print("\n| concurrent speeches | local tokens/s in total (× one) | through llama-server (× one) | llama-server alone (× one) | local ÷ llama-server alone | time to first token, local / through / alone |")
print("|---|---|---|---|---|---|")
for c in sorted(by):
    a, b, d = by[c][local], by[c][remote], by[c][alone]
    print(f"| {c} | {a['total_tok_s']:.1f} ({a['total_tok_s'] / single[local]:.2f}×) "
          f"| {b['total_tok_s']:.1f} ({b['total_tok_s'] / single[remote]:.2f}×) "
          f"| {d['total_tok_s']:.1f} ({d['total_tok_s'] / single[alone]:.2f}×) "
          f"| {a['total_tok_s'] / d['total_tok_s']:.2f}× "
          f"| {a['ttft_ms_median']:.0f} / {b['ttft_ms_median']:.0f} / {d['ttft_ms_median']:.0f} ms |")
PY
