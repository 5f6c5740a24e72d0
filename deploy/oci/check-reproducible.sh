#!/usr/bin/env bash
# CI check of deploy/oci/build.sh: builds the three images twice, into different directories
# and under a different umask, and fails unless both builds are byte-identical (same manifest
# digests, same blobs). Then unpacks each image and runs its binary's --version inside the
# unpacked root file system (chroot, so root is needed) to prove the copied libraries suffice.
#
# Needs the release binaries (this script never builds them):
#   cargo build --release --locked -p quarry-coordinator -p marble-sidecar -p quarry-cli
# Usage: deploy/oci/check-reproducible.sh [--bin-dir DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$here/build.sh" "$@" --out "$work/first/layout" > "$work/first.txt"
( umask 077; cd /; "$here/build.sh" "$@" --out "$work/second/other-name" > "$work/second.txt" )
if ! diff -u "$work/first/layout/digests.txt" "$work/second/other-name/digests.txt"; then
  echo "FAIL: the two builds gave different image digests" >&2
  exit 1
fi
if ! diff -r "$work/first/layout" "$work/second/other-name" >/dev/null; then
  echo "FAIL: same manifest digests but different layout contents" >&2
  diff -rq "$work/first/layout" "$work/second/other-name" >&2 || true
  exit 1
fi
echo "reproducible: both builds gave"
sed 's/^/  /' "$work/first/layout/digests.txt"

if [ "$(id -u)" != 0 ]; then
  echo "FAIL: running the unpacked images needs root (chroot)" >&2
  exit 1
fi
for pair in quarry-coordinator:quarry-coordinator marble-sidecar:marble-sidecar quarry-cli:quarry; do
  tag=${pair%%:*} bin=${pair#*:}
  umoci unpack --image "$work/first/layout:$tag" "$work/bundle-$tag" >/dev/null
  out=$(chroot --userspec=65532:65532 "$work/bundle-$tag/rootfs" "/usr/local/bin/$bin" --version)
  echo "$tag runs from its own root file system: $out"
done
