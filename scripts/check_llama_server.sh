#!/usr/bin/env bash
# engine.backend = "openai" against a real llama.cpp `llama-server` (not a fake), outside CI:
# builds llama.cpp from the PyPI sdist if it is not cached (scripts/build_llamacpp.sh), then
# runs the ignored test that exports the tiny fixture model as GGUF, serves it with
# llama-server, and checks that `mananera serve --set engine.backend=openai` answers the page
# and both (fake) bots through it with exactly the local engine's greedy speeches.
#
#   scripts/check_llama_server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(scripts/build_llamacpp.sh)"
MANANERA_LLAMA_SERVER="$bin/llama-server" cargo test --test backend -- --ignored \
    a_real_llama_server --nocapture
