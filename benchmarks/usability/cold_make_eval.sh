#!/usr/bin/env bash
# Cold `make eval` wall time: an empty $UNLEARN_HOME (no built targets, no cached evaluations) and an empty runs
# folder, after the package install (`make setup`, not timed). Budget: <= 60 s on 2 cores.
#   bash benchmarks/usability/cold_make_eval.sh [make eval args, e.g. METHOD=ga]
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s setup
home=$(mktemp -d) runs=$(mktemp -d)
trap 'rm -rf "$home" "$runs"' EXIT
start=$(date +%s.%N)
UNLEARN_HOME="$home" make -s eval OUT="$runs" ARGS="--no-progress" "$@" | tee "$runs/.table.txt"
end=$(date +%s.%N)
python3 -c "print(f'cold make eval: {$end - $start:.1f} s wall on $(nproc) cores ($(uname -m))')"
