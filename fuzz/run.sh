#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 20) from the
# committed seeds, on the stable toolchain (`-s none`: no sanitizer is needed,
# the crate forbids unsafe code, so a finding is a panic or an assertion).
# Prints each target's executions; exits non-zero on the first finding, whose
# input libFuzzer leaves under fuzz/artifacts/<target>/.
#   bash fuzz/run.sh          # CI's bounded run
#   bash fuzz/run.sh 240      # the long run (README, "Hostile clients and faults")
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
targets=(envelope_open callback_query login_uri api_body notification_body lwa_form)
cargo fuzz build -s none
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    if ! cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target found a failing input: see fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs="$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo '?')"
    coverage="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')"
    printf 'fuzz %-18s %12s executions in %ss, coverage %s, no finding\n' "$target" "$runs" "$seconds" "$coverage"
    rm -f "$log"
done
