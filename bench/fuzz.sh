#!/usr/bin/env bash
# Bounded fuzzing of flowd's parsers with cargo-fuzz (libFuzzer), on stable Rust.
#
#   bench/fuzz.sh                          # every target, 60 s each
#   FUZZ_SECONDS=300 bench/fuzz.sh         # longer
#   FUZZ_TARGETS="template cel_condition" bench/fuzz.sh
#   FUZZ_SANITIZER=none bench/fuzz.sh      # without AddressSanitizer (faster; panics still found)
#
# The targets live in fuzz/ (its own workspace; builds go to fuzz/target). cargo-fuzz passes
# `-Z` flags to rustc, which stable accepts under RUSTC_BOOTSTRAP=1. New corpus entries go to
# fuzz/target/corpus/<target> (ignored); the committed seeds in fuzz/corpus/<target> are only
# read. A crash leaves its input in fuzz/artifacts/<target>/ and the log in
# fuzz/target/logs/<target>.log. Prints one line per target; exits 1 if any target crashed.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
read -r -a targets <<< "${FUZZ_TARGETS:-rule_loader template cel_condition intake_shape signature_header}"

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "== installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)" >&2
for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$target"
done

mkdir -p fuzz/target/logs
results=()
crashed=0
for target in "${targets[@]}"; do
    scratch="fuzz/target/corpus/$target"
    log="fuzz/target/logs/$target.log"
    mkdir -p "$scratch" "fuzz/corpus/$target"
    echo "== fuzzing $target for ${seconds}s" >&2
    started=$(date +%s)
    set +e
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        > "$log" 2>&1
    status=$?
    set -e
    elapsed=$(( $(date +%s) - started ))

    # `Done N runs in S second(s)` closes a run that ended by itself; after a crash only the
    # final stats (`stat::number_of_executed_units: N`) are printed.
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)
    if [[ -z "$runs" ]]; then
        runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -n 1 \
            | grep -oE '[0-9]+$' || true)
    fi
    runs=${runs:-unknown}

    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5 || true)
    if [[ $status -ne 0 || -n "$artifact" ]]; then
        crashed=1
        # A panic prints `thread '...' panicked at FILE:LINE:COL:` and its message on the next
        # line; anything else shows as libFuzzer's or the sanitizer's `ERROR:` line.
        reason=$(awk '/panicked at /{sub(/.*panicked at /, ""); at=$0; getline; print at " " $0; exit}' "$log")
        if [[ -z "$reason" ]]; then
            reason=$(grep -m1 -oE "ERROR: (libFuzzer|AddressSanitizer): .*" "$log" \
                || echo "exit status $status")
        fi
        results+=("$target: $runs runs in ${elapsed}s, CRASH ($reason) ${artifact:-} (log: $log)")
    else
        results+=("$target: $runs runs in ${elapsed}s, no crash")
    fi
done

echo
echo "== fuzz results (${seconds}s per target, sanitizer: $sanitizer)"
printf '%s\n' "${results[@]}"
exit "$crashed"
