#!/usr/bin/env bash
# Issue 16's regression check: the README's first command builds and starts the coordinator
# with nothing but the Rust toolchain, and the sidecar (its Workload API is gRPC too) builds
# the same way. PATH is stripped of every directory holding a protoc and PROTOC is unset; a
# `protoc` placed first on PATH fails and leaves a mark, so a build script that looks for
# protoc fails the build and the check. Then the coordinator must answer GET /api/v2/status.
#
# On a clean clone (CI) this is the first build, so every build script runs under these
# conditions. With a warm target/ only changed crates rebuild; set CARGO_TARGET_DIR to an
# empty directory to re-check everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/provision.sh
need_cargo
need curl curl "to ask the started coordinator for its status"
provision

work=$(mktemp -d)
coordinator=
cleanup() {
  if [ -n "$coordinator" ]; then
    kill "$coordinator" 2>/dev/null || true
    wait "$coordinator" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# PATH without protoc, and a tripwire protoc in front of it.
stripped=
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -n "$d" ] && [ ! -x "$d/protoc" ] && stripped="${stripped:+$stripped:}$d"
done
mkdir "$work/bin"
cat >"$work/bin/protoc" <<TRIP
#!/bin/sh
echo "protoc \$*" >> "$work/protoc-called"
echo "error: the build ran protoc, which a fresh machine does not have (issue 16)" >&2
exit 1
TRIP
chmod +x "$work/bin/protoc"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
client_port=$(free_port)
mesh_port=$(free_port)

echo "== build the release binaries (the coordinator and the sidecar compile protos) and start the coordinator without protoc (PATH=$work/bin:<PATH without protoc>, PROTOC unset)"
# One build of exactly the package set the deployment step, the demo and docs/RELEASE.md use,
# so every later release build is a no-op. Cargo unifies dependency features over the packages
# selected: a build of one package alone gives libc, serde_json, futures-util … other features
# and recompiles nearly the whole tree, which is why the coordinator is started from the binary
# below and not with `cargo run -p quarry-coordinator`.
env -u PROTOC PATH="$work/bin:$stripped" cargo build --release --locked \
  -p quarry-coordinator -p marble-sidecar -p quarry-cli
if [ -e "$work/protoc-called" ]; then
  echo "error: the build called protoc: $(cat "$work/protoc-called")" >&2
  exit 1
fi
binary=$(realpath -m "${CARGO_TARGET_DIR:-target}/release/quarry-coordinator")
(cd "$work" && exec env -u PROTOC PATH="$work/bin:$stripped" "$binary" --simulation \
  --data-dir "$work/data" --client-addr "127.0.0.1:$client_port" \
  --mesh-addr "127.0.0.1:$mesh_port") >"$work/coordinator.log" 2>&1 &
coordinator=$!
# Up to 60 seconds for the coordinator to bind its ports.
for _ in $(seq 1 300); do
  if status=$(curl -sfk --max-time 2 "https://127.0.0.1:$client_port/api/v2/status"); then
    echo "GET /api/v2/status: $status"
    echo "$status" | grep -q '"status":"success"' || { echo "error: unexpected status body" >&2; exit 1; }
    exit 0
  fi
  kill -0 "$coordinator" 2>/dev/null || break
  sleep 0.2
done
echo "error: the coordinator did not answer GET /api/v2/status; its log:" >&2
cat "$work/coordinator.log" >&2
exit 1
