#!/usr/bin/env bash
# The test command of README.md, and what .ci/run runs: installs what the workspace tests need
# (Debian packages, when missing), then builds and runs every unit and end-to-end test.
#
# The tests start real binaries and real servers on loopback: etcd (the etcd store and replica
# tests run a 3-member cluster), openssl (leaf certificates are checked with `openssl verify`)
# and curl. They read the shared fixtures (real MarbleRun manifests and hardware evidence)
# from ../shared/testdata or $QUARRY_SHARED_DIR/testdata. Extra arguments go to `cargo test`
# before `--` (e.g. `scripts/test.sh -p quarry-coordinator`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/provision.sh

need_cargo
need_shared_fixtures
need etcd etcd-server "the etcd store and replica tests run a real etcd cluster"
need openssl openssl "the end-to-end tests check issued certificates with openssl verify"
need curl curl "the end-to-end tests call the REST API with curl"
provision

# --all-targets: the build then has the features `cargo test` resolves (dev-dependencies
# included), so the test run reuses it instead of recompiling most of the tree; the end-to-end
# tests find every binary in target/debug.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@" -- --test-threads=2
