#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time, one after
# another (a single libFuzzer job each), then writes RESULTS.md: per target
# the seconds, the executions (libFuzzer's final stat::number_of_executed_units)
# and whether a crash was found.
#
#   fuzz/run.sh                      # every target, 60 s each
#   FUZZ_SECONDS=300 fuzz/run.sh jwt resolvers
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 60)
#   FUZZ_SANITIZER   cargo fuzz --sanitizer (default none: hidra forbids
#                    unsafe code, and panics are what the targets look for)
#   FUZZ_SKIP_KNOWN  passed to the targets: known library panics to fuzz past
#                    (see README.md), e.g. `all`
#   FUZZ_APPEND      1: add this run to RESULTS.md instead of replacing it
#
# Needs `cargo install cargo-fuzz`, a nightly toolchain, and for the
# `resolvers` and `api_key` targets a PostgreSQL server as
# `hidra::testing::PgServer::get` finds or starts one (nothing is created on it).
# Works from any directory. Exits 1 if a target crashed.

set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
ALL_TARGETS=(tenant_id resolvers jwt api_key migration_file)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

case "$SECONDS_EACH" in
  '' | *[!0-9]*) echo "error: FUZZ_SECONDS must be a whole number of seconds, not '$SECONDS_EACH'" >&2; exit 1 ;;
esac

cd "$FUZZ_DIR"
for target in "${TARGETS[@]}"; do
  if [ ! -f "fuzz_targets/$target.rs" ]; then
    echo "error: no fuzz target '$target' (have: ${ALL_TARGETS[*]})" >&2
    exit 1
  fi
done
mkdir -p logs corpus artifacts

# What is fuzzed: the commit, and whether the sources differ from it.
commit=$(git -C "$FUZZ_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$FUZZ_DIR/.." status --porcelain -- crates fuzz/fuzz_targets fuzz/src fuzz/Cargo.toml 2>/dev/null || true)
if [ -n "$dirty" ]; then
  commit="$commit, with uncommitted changes in: $(echo "$dirty" | awk '{print $2}' | cut -d/ -f1-2 | sort -u | tr '\n' ' ' | sed 's/ $//')"
fi
echo "building the fuzz targets (sanitizer: $SANITIZER)"
cargo +nightly fuzz build --sanitizer "$SANITIZER"

rows=()
crashed=0
for target in "${TARGETS[@]}"; do
  log="logs/$target.log"
  mkdir -p "corpus/$target" "artifacts/$target"
  dirs=("corpus/$target")
  [ -d "seeds/$target" ] && dirs+=("seeds/$target")
  args=(-max_total_time="$SECONDS_EACH" -print_final_stats=1 -jobs=1 -timeout=30)
  [ -f "dicts/$target.dict" ] && args+=(-dict="dicts/$target.dict")

  echo "fuzzing $target for ${SECONDS_EACH}s (log: fuzz/$log)"
  started=$(date +%s)
  status=0
  cargo +nightly fuzz run --sanitizer "$SANITIZER" "$target" "${dirs[@]}" -- "${args[@]}" \
    >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - started ))
  # -jobs=1 runs the job in a child process that writes fuzz-0.log here;
  # its text is already in $log.
  rm -f fuzz-[0-9]*.log

  executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
  executions="${executions:-?}"
  artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/Test unit written to //' || true)
  if [ "$status" -eq 0 ]; then
    result="no crash"
  else
    crashed=1
    where=$(grep -m 1 -o 'panicked at [^ ]*' "$log" | sed 's/panicked at //; s/:$//' || true)
    message=$(grep -m 1 -A 1 'panicked at' "$log" | tail -n 1 | cut -c 1-160 | tr '|' '/' || true)
    result="**crash** (exit $status)"
    [ -n "$where" ] && result="$result at \`${where#"$(dirname "$FUZZ_DIR")/"}\`: $message"
    [ -n "$artifact" ] && result="$result; input: \`${artifact#"$FUZZ_DIR/"}\`"
  fi
  echo "  $target: $executions executions in ${elapsed}s, $result"
  rows+=("| \`$target\` | $elapsed | $executions | $result |")
done

if [ "${FUZZ_APPEND:-0}" != 1 ] || [ ! -f RESULTS.md ]; then
  {
    echo "# Fuzzing results"
    echo
    echo "Written by \`fuzz/run.sh\`; see \`fuzz/README.md\` for what each target drives."
  } >RESULTS.md
fi
{
  echo
  echo "## Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- commit: $commit"
  echo "- toolchain: $(rustc +nightly --version)"
  echo "- $(cargo +nightly fuzz --version 2>/dev/null || echo 'cargo-fuzz (version unknown)'), sanitizer: $SANITIZER, one libFuzzer job per target (\`-jobs=1\`), ${SECONDS_EACH}s each"
  echo "- FUZZ_SKIP_KNOWN: ${FUZZ_SKIP_KNOWN:-(unset)}"
  echo "- machine: $(nproc) cores"
  echo
  echo "| target | seconds | executions | result |"
  echo "|---|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} >>RESULTS.md
echo "wrote fuzz/RESULTS.md"
exit "$crashed"
