#!/usr/bin/env bash
# The long fuzzing campaign: every target for SECONDS (default 600) on the
# stable toolchain, one after another, growing fuzz/corpus/TARGET from the
# committed seeds. Prints each target's exec count and the coverage it
# reached; a finding stops the campaign with the crash in
# fuzz/artifacts/TARGET. Usage: fuzz/campaign.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^weft-fuzz$')
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -s none >/dev/null
printf '%-12s %8s %14s %12s %8s %8s\n' target seconds execs execs/s cov ft
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" >"$log" 2>&1 || {
        tail -30 "$log"
        echo "fuzz $t: FINDING (see fuzz/artifacts/$t)"
        exit 1
    }
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    set -- $runs
    printf '%-12s %8s %14s %12s %8s %8s\n' "$t" "$2" "$1" "$(($1 / ($2 > 0 ? $2 : 1)))" "$cov" "$ft"
    rm -f "$log"
done
