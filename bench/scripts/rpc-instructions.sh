#!/usr/bin/env bash
# Client instructions per unary call, per `waypost-bench rpc` variant,
# counted by callgrind (user-space instructions of the bench process only;
# the backends run natively in a child process and the kernel is not
# counted). Each variant runs twice, with SMALL and LARGE sequential calls
# after the same setup and warm-up; (total(LARGE) - total(SMALL)) /
# (LARGE - SMALL) is the cost of one call, free of setup. Repeated RUNS
# times, because how often a read finds its data already there depends on
# timing. Prints one line per run and variant, then a JSON line of means.
#
#   cargo build --release -p waypost-bench && bench/scripts/rpc-instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/waypost-bench
RUNS=${RUNS:-3}
SMALL=${SMALL:-2000}
LARGE=${LARGE:-12000}
VARIANTS=${VARIANTS:-"waypost tonic_balance tonic_single floor waypost_single"}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release -p waypost-bench" >&2; exit 1; }

collected() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" rpc-calls --variant "$1" --calls "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

declare -A sum
for run in $(seq 1 "$RUNS"); do
  for v in $VARIANTS; do
    small=$(collected "$v" "$SMALL")
    large=$(collected "$v" "$LARGE")
    per=$(( (large - small) / (LARGE - SMALL) ))
    sum[$v]=$(( ${sum[$v]:-0} + per ))
    echo "run $run $v: $per instructions/call" >&2
  done
done
json="{"
for v in $VARIANTS; do
  json+="\"${v}_instructions\":$(( ${sum[$v]} / RUNS )),"
done
echo "${json%,}}"
