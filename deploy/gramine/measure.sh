#!/usr/bin/env bash
# Measures what the Gramine manifests must provide for: peak memory (RSS and virtual size)
# and peak thread count of quarry-coordinator and marble-sidecar, natively on Linux, under
# the environment the manifests set (TOKIO_WORKER_THREADS=4, MALLOC_ARENA_MAX=2) and a small
# load: N sidecars activating at once (default 100), twice. Uses the simulated TEE, so it runs
# anywhere; an enclave adds Gramine's own memory and threads on top (see SIZING.md).
#
# Needs the release binaries (never builds them):
#   cargo build --release --locked -p quarry-coordinator -p marble-sidecar -p quarry-cli
# and jq. Usage: deploy/gramine/measure.sh [N]   (QUARRY_BIN_DIR overrides target/release)
set -euo pipefail
n=${1:-100}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${QUARRY_BIN_DIR:-$repo/target/release}
for b in quarry-coordinator marble-sidecar quarry; do
  [ -x "$bin/$b" ] || { echo "error: $bin/$b missing; cargo build --release first" >&2; exit 1; }
done
export PATH=$bin:$PATH TOKIO_WORKER_THREADS=4 MALLOC_ARENA_MAX=2
w=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$w"; }
trap cleanup EXIT
cd "$w"

# Samples /proc/PID/status every 20 ms until PID exits or STOP appears; writes maxima to OUT.
sample() {
  local pid=$1 out=$2 rss=0 hwm=0 vm=0 th=0
  while [ -r "/proc/$pid/status" ] && [ ! -e "$w/STOP" ]; do
    eval "$(awk '/^VmRSS:/{printf "r=%s;",$2} /^VmHWM:/{printf "h=%s;",$2} /^VmSize:/{printf "v=%s;",$2} /^Threads:/{printf "t=%s;",$2}' "/proc/$pid/status" 2>/dev/null || true)"
    [ "${r:-0}" -gt "$rss" ] && rss=$r; [ "${h:-0}" -gt "$hwm" ] && hwm=$h
    [ "${v:-0}" -gt "$vm" ] && vm=$v; [ "${t:-0}" -gt "$th" ] && th=$t
    echo "rss_kib=$rss hwm_kib=$hwm vmsize_kib=$vm threads=$th" > "$out"
    sleep 0.02
  done
}

port=$((20000 + RANDOM % 20000))
quarry sim init ./sim >/dev/null
quarry-coordinator --tee simulated --sim-platform ./sim --data-dir ./data \
  --client-addr 127.0.0.1:$port --mesh-addr 127.0.0.1:$((port + 1)) 2> coordinator.log &
cpid=$!; pids+=("$cpid")
for _ in $(seq 100); do quarry status --coordinator localhost:$port --insecure >/dev/null 2>&1 && break; sleep 0.1; done
sample "$cpid" idle.txt & pids+=("$!")
sleep 1; touch STOP; sleep 0.1; rm STOP
echo "coordinator idle:            $(cat idle.txt)"
sample "$cpid" load.txt & pids+=("$!")

jq -n --arg id "$(quarry package-info --sim "$bin/quarry-coordinator" --json | jq -r .uniqueId)" \
  --arg ca "$(cat sim/platform-ca.pem)" '{TEE: "simulated", UniqueID: $id, SimulationPlatformCA: $ca}' > policy.json
quarry verify --coordinator localhost:$port --policy policy.json --allow-simulation --root-out root.pem >/dev/null
svc=$(command -v true)
slow=$(command -v sleep)
jq -n --arg id "$(quarry package-info --sim "$svc" --json | jq -r .uniqueId)" \
  --arg slow "$(quarry package-info --sim "$slow" --json | jq -r .uniqueId)" \
  '{Packages: {svc: {TEE: "simulated", UniqueID: $id}, slow: {TEE: "simulated", UniqueID: $slow}},
    Marbles: {svc: {Package: "svc", Parameters: {Files: {"f.txt": "x"}, Env: {K: "{{ hex .Secrets.k }}"}}},
              slow: {Package: "slow"}},
    Secrets: {k: {Type: "symmetric-key", Size: 128}}}' > manifest.json
quarry manifest set manifest.json --coordinator localhost:$port --root-ca root.pem >/dev/null

run_sidecars() {
  local round=$1 ok=0 i
  local sp=()
  for i in $(seq "$n"); do
    mkdir -p "m$round-$i"
    ( cd "m$round-$i" && marble-sidecar run --coordinator localhost:$((port + 1)) --marble-type svc \
        --uuid-file ./uuid --tee simulated --sim-platform "$w/sim" --coordinator-root-ca "$w/root.pem" \
        -- "$svc" 2> sidecar.log ) &
    sp+=("$!")
  done
  for p in "${sp[@]}"; do wait "$p" && ok=$((ok + 1)); done
  echo "round $round: $ok of $n sidecars activated and ran their service"
}
start=$(date +%s.%N)
run_sidecars 1
run_sidecars 2
end=$(date +%s.%N)
touch STOP; sleep 0.1
echo "coordinator under load:      $(cat load.txt) ($((2 * n)) activations in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s)"
rm -f STOP

# One sidecar on its own, its service running for 2 s.
mkdir solo && cd solo
marble-sidecar run --coordinator localhost:$((port + 1)) --marble-type slow --uuid-file ./uuid \
  --tee simulated --sim-platform "$w/sim" --coordinator-root-ca "$w/root.pem" -- "$slow" 2 \
  2> sidecar.log &
spid=$!
sample "$spid" ../sidecar.txt &
wait "$spid" || { echo "sidecar failed:" >&2; tail -3 sidecar.log >&2; }
cd ..
echo "marble-sidecar (run, 2 s):   $(cat sidecar.txt)"
