#!/usr/bin/env bash
# The soak benchmark (tests/soak.rs): the real daemon with the fake Discord, the fake Telegram
# and web clients, 4 users each, faults every minute and a nightly run at half time.
#   scripts/soak.sh tiny [SECONDS]   the tiny fixture model (default 1800 s)
#   scripts/soak.sh r560 [SECONDS]   random weights of bloom-560m's shape, Q8_0, no nightly
#                                    run (a word-level tokenizer has nothing to learn)
# Prints a markdown table; fails on a watchdog trip, a duplicate or a lost request.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-tiny}"
export SOAK_SECONDS="${2:-1800}"
case "$kind" in
    tiny) ;;
    r560)
        model="${CARGO_TARGET_DIR:-target}/soak-r560"
        [ -d "$model" ] || cargo run --locked -q -- random-model "$model"
        export SOAK_MODEL="$(realpath "$model")" SOAK_TOKENS=128 SOAK_NIGHTLY=0
        export SOAK_SETS="engine.quantization=\"q8_0\""
        ;;
    *) echo "usage: $0 tiny|r560 [SECONDS]" >&2; exit 2 ;;
esac
exec cargo test --workspace --locked --test soak -- --ignored --nocapture --test-threads 1
