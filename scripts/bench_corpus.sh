#!/usr/bin/env bash
# Corpus throughput, for README's table:
#   1. cleaning: MB/s of HTML on one core over the two real gob.mx fixture pages
#      (parse + extract + keep the president's words), `mananera corpus bench`;
#   2. import: MB/s of `mananera corpus import` over a synthetic dataset in the layout of the
#      public "mananeras" plain-text dataset (FILES files of ~50 KB, like the real 3,728 files /
#      188.7 MB), then a second, idempotent import of the same files.
# Usage: cargo build --release && scripts/bench_corpus.sh   (FILES=2000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/mananera}
FILES=${FILES:-2000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pages=tests/fixtures/pages

echo "== cleaning (one core)"
"$BIN" --config config.toml corpus bench "$pages/gob-2019-09-11.html" "$pages/gob-2021-06-28.html" --seconds 5

echo "== synthetic dataset: $FILES files"
speech=$(cat "$pages/gob-2019-09-11.expected.txt")
answer=$(cat "$pages/gob-2021-06-28.expected.txt")
months=(enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre)
for i in $(seq 1 "$FILES"); do
    year=$((2019 + i % 5)); month=${months[$((i % 12))]}; day=$(printf %02d $((1 + i % 28)))
    dir="$work/dataset/articulos/$year/$month"
    mkdir -p "$dir"
    {
        echo "Versión estenográfica de la conferencia de prensa matutina número $i"
        echo "Presidencia de la República"
        echo "$day de $month de $year"
        echo "---"
        echo "MODERADOR"
        echo "Buenos días, inicia la conferencia $i."
        echo "---"
        echo "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR"
        printf '%s\n' "$speech" | sed "/^$/d; s/^/($i) /"
        echo "---"
        echo "PREGUNTA"
        echo "¿Y sobre el tema número $i, presidente?"
        echo "---"
        echo "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR"
        printf '%s\n' "$answer" | sed "/^$/d; s/^/[$i] /"
    } > "$dir/$day--conferencia-$i.txt"
done
du -sh "$work/dataset"

echo "== import (first time, then again: idempotent)"
"$BIN" --config config.toml corpus import "$work/dataset" --corpus-dir "$work/corpus"
"$BIN" --config config.toml corpus import "$work/dataset" --corpus-dir "$work/corpus"
"$BIN" --config config.toml corpus stats --corpus-dir "$work/corpus"
