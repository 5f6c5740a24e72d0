#!/usr/bin/env bash
# Runs one fuzz target for a bounded time: fuzz/run.sh TARGET SECONDS
# Targets: manifest, evidence, api_body, bundle. Needs cargo-fuzz (`cargo install
# cargo-fuzz`). With a nightly toolchain the targets run under AddressSanitizer (unless
# FUZZ_SANITIZER=none); without one they run on stable with RUSTC_BOOTSTRAP=1 and no
# sanitizer (Rust code is memory-safe, so libFuzzer still finds panics, overflows, aborts,
# timeouts and memory blow-ups). The corpus (fuzz/corpus/TARGET) is seeded from the test
# data; new inputs libFuzzer finds are added to it, crashes land in fuzz/artifacts/TARGET (copy
# one to fuzz/regressions/TARGET once fixed: every `cargo test` replays that directory).
# FUZZ_PROFILE=release (default) is cargo-fuzz's optimised build, the fastest fuzzing;
# FUZZ_PROFILE=dev (`cargo fuzz --dev`, see fuzz/Cargo.toml) builds in half the time with
# debug assertions on, for short runs such as CI's.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: fuzz/run.sh TARGET SECONDS}"
secs="${2:-30}"
shared="${QUARRY_SHARED_DIR:-../../shared}/testdata"
mkdir -p "corpus/$target"
# Seed: the checked-in seeds, plus the shared test data (real manifests and evidence).
cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
cp -n regressions/"$target"/* "corpus/$target/" 2>/dev/null || true
case "$target" in
  manifest) cp -n "$shared"/marblerun-manifests/*.json "$shared"/marblerun-manifests/*.yaml "corpus/$target/" 2>/dev/null || true ;;
  evidence)
    # The first byte selects the type: 0 SGX, 1 TDX, 2 SNP, 3 simulated.
    for pair in sgx:0 tdx:1 snp:2; do
      dir="${pair%%:*}"; sel="${pair##*:}"
      for f in "$shared"/attestation/"$dir"/*.bin; do
        [ -e "$f" ] || continue
        out="corpus/$target/$dir-$(basename "$f")"
        [ -e "$out" ] || { printf "\\$(printf %03o "$sel")"; cat "$f"; } > "$out"
      done
    done ;;
esac
limits=(-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10)
case "${FUZZ_PROFILE:-release}" in
  release) build=(-O) ;;
  dev) build=(--dev) ;;
  *) echo "fuzz/run.sh: FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
# FUZZ_SANITIZER=address (default on nightly) or none: the Rust code is memory-safe, so
# without a sanitizer libFuzzer still finds panics, overflows (dev), timeouts and blow-ups;
# the build is a quarter faster (dev: 3m28s against 4m37s on 2 cores).
sanitizer="${FUZZ_SANITIZER:-address}"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  exec cargo +nightly fuzz run "${build[@]}" --sanitizer "$sanitizer" "$target" "corpus/$target" -- "${limits[@]}"
fi
echo "fuzz/run.sh: no nightly toolchain; running on stable without a sanitizer" >&2
export RUSTC_BOOTSTRAP=1
exec cargo fuzz run "${build[@]}" --sanitizer none "$target" "corpus/$target" -- "${limits[@]}"
