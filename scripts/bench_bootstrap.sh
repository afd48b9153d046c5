#!/usr/bin/env bash
# A fresh install's first night (README "The first night"), at bloom-560m's shape with random
# weights and Q8_0 serving: import the dataset's archive into an empty corpus, then one
# budgeted nightly run end to end (train, validate, swap) while speeches are asked for, and
# speech speed idle vs during the training.
#
#   scripts/bench_bootstrap.sh ARCHIVE [BUDGET_MINUTES]     # default budget 15 minutes
#
# ARCHIVE is the dataset as GitHub serves it
# (https://codeload.github.com/fferegrino/mananeras/tar.gz/refs/heads/main), or made from a
# clone: git -C mananeras archive --format=tar.gz --prefix=mananeras-main/ HEAD > m.tar.gz
# Dev profile: the dependencies and the training crate are optimised (opt-level 3), the
# root crate at opt-level 1. Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
archive="$(realpath "$1")"
budget="${2:-15}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --locked -q
bin="$target/debug/mananera"
model="$target/soak-r560"
[ -d "$model" ] || "$bin" random-model "$model"
work="$(mktemp -d)"
daemon=""
trap '[ -n "$daemon" ] && kill "$daemon" 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/config.toml" <<TOML
[corpus]
dir = "$work/corpus"

[engine]
quantization = "q8_0"

[generation]
max_words = 0

[scrape]
sources = []
archives = []

[serve]
state_dir = "$work/state"

[limits]
per_minute = 0
per_day = 0

[training]
dir = "$work/versions"

[nightly]
first_run = "scheduled"
train_budget_minutes = $budget
train_max_minutes = $((budget * 2 + 60))
TOML
m() { MANANERA_LOG=info "$bin" --config "$work/config.toml" "$@"; }

started=$(date +%s.%N)
# Exit 4: some files were not transcripts (the dataset has a few); the rest were stored.
m --format json corpus import "$archive" > "$work/import.json" 2> "$work/import.log" || [ $? -eq 4 ]
import_s=$(echo "$(date +%s.%N) - $started" | bc)
files=$(jq .files "$work/import.json")
new=$(jq .new "$work/import.json")

# Not through `m`: $! must be the daemon itself, not a subshell, for the kill to stop it.
MANANERA_LOG=info "$bin" --config "$work/config.toml" serve --model "$model" \
    --listen 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve.log" &
daemon=$!
until grep -q "listening on" "$work/serve.out" 2>/dev/null; do sleep 1; done
url=$(sed -n 's/^mananera listening on //p' "$work/serve.out")
until curl -sf "$url/readyz" > /dev/null; do sleep 1; done

# One speech of 128 tokens on topic "$1" (a new one each time: no cache hit): its tokens
# per second.
speech() {
    curl -sf "$url/api/generate" -H 'content-type: application/json' \
        -d "{\"topic\": \"tema $1\", \"max_new_tokens\": 128, \"min_new_tokens\": 128}" |
        jq -e 'if .cached then error("a cached answer") else .new_tokens / .seconds end'
}
idle=()
for i in 1 2 3; do idle+=("$(speech "idle $i")"); done

m retrain --now > /dev/null
phase() { m --format json status | jq -r '.running.phase // "done"'; }
until [ "$(phase)" = training ]; do sleep 2; done
# Past tokenizing and the first validation: the optimizer steps have begun.
until grep -q '"training step"\|training step' "$work/serve.log"; do sleep 5; done
busy=()
while [ "$(phase)" = training ] && [ "${#busy[@]}" -lt 6 ]; do
    busy+=("$(speech "busy ${#busy[@]}")")
done
until [ "$(phase)" = done ]; do sleep 5; done
kill "$daemon"
wait "$daemon" || true

run=$(m --format json versions | jq '.versions[0]')
mean() { printf '%s\n' "$@" | awk '{s += $1} END {if (NR) printf "%.2f", s / NR; else print "—"}'; }
at() { grep -m1 "$1" "$work/serve.log" | cut -c1-27; }
secs() { echo "$(date -d "$2" +%s.%N) - $(date -d "$1" +%s.%N)" | bc; }
train_start=$(at 'phase="training"')
steps_start=$(grep -m1 'training started' "$work/serve.log" | cut -c1-27)
valid_start=$(at 'validating the new version')
swap_start=$(at 'loading the new version')
swapped=$(at 'now serving the new version' || true)
echo
echo "| what | value |"
echo "|---|---|"
echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads |"
echo "| archive | $(du -m "$archive" | cut -f1) MB, $files files read, $new transcripts new |"
echo "| import (check, clean, store) | $import_s s |"
echo "| tokenize + validate the base (before the first step) | $(secs "$train_start" "$steps_start") s |"
echo "| training budget | $budget min |"
echo "| steps / tokens trained | $(echo "$run" | jq -r '"\(.metrics.steps) / \(.metrics.tokens)"') |"
echo "| training tokens/s (whole run) | $(echo "$run" | jq '.metrics.tokens_per_s * 100 | round / 100') |"
echo "| transcripts trained / backlog left | $(echo "$run" | jq -r '"\(.new_transcripts | length) / \(.metrics.backlog)"') |"
echo "| validation of the new version | $(secs "$valid_start" "$swap_start") s |"
echo "| swap (load the new version) | ${swapped:+$(secs "$swap_start" "$swapped") s} |"
echo "| version | $(echo "$run" | jq -r '"\(.id) \(.status), perplexity \(.metrics.perplexity_before | . * 1000 | round / 1000) → \(.metrics.perplexity_after | . * 1000 | round / 1000)"') |"
echo "| speech tokens/s idle (3 × 128) | $(mean "${idle[@]}") |"
echo "| speech tokens/s during training (${#busy[@]} × 128) | $(mean "${busy[@]}") |"
