#!/bin/sh
# Mesh proxy benchmark (issue 6, deliverable 5): builds the release binaries it starts (the
# coordinator, the CLI, the sidecar) and the benchmark, checks the peer tools, then runs
# target/release/quarry-proxy-bench with the given arguments (e.g. --json, --rounds 3).
# Not run in CI: it takes minutes and loads the whole machine.
#
#   bench/proxy-bench.sh                 # tables, 1 round of 10 s per target and mode
#   bench/proxy-bench.sh --rounds 3 --json
set -eu
cd "$(dirname "$0")/.."
missing=""
for tool in wrk:wrk stunnel4:stunnel4 haproxy:haproxy nginx:nginx openssl:openssl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool#*:}"
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$missing libnginx-mod-stream"
if [ -n "$missing" ]; then
    echo "proxy-bench: missing tools; install them with: apt-get install$missing" >&2
    exit 1
fi
cargo build --release -p quarry-coordinator -p quarry-cli -p marble-sidecar -p quarry-proxy-bench
exec target/release/quarry-proxy-bench "$@"
