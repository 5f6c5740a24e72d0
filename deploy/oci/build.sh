#!/usr/bin/env bash
# Builds the OCI images of Quarry -- quarry-coordinator, marble-sidecar and the quarry CLI --
# from scratch (no base image), without a container engine, reproducibly: the same binaries
# and the same SOURCE_DATE_EPOCH give byte-identical images, hence identical digests.
#
# Needs the release binaries first (this script never builds them):
#   cargo build --release --locked -p quarry-coordinator -p marble-sidecar -p quarry-cli
# and: umoci (Debian package `umoci`), python3, ldd (libc-bin), sha256sum.
#
# Usage: deploy/oci/build.sh [--bin-dir DIR] [--out DIR]
#   --bin-dir DIR  where the binaries are          (default: <repo>/target/release)
#   --out DIR      OCI image layout to (re)create  (default: <repo>/target/oci)
# Environment: SOURCE_DATE_EPOCH (default: the time of the last git commit) is every file's
# mtime and the images' creation time.
#
# Output: an OCI image layout in DIR with the tags quarry-coordinator, marble-sidecar and
# quarry-cli, and DIR/digests.txt ("<tag> sha256:<manifest digest>" per line) -- the digests
# the Helm chart pins. Push without changing them, e.g.:
#   skopeo copy --preserve-digests oci:target/oci:quarry-coordinator \
#     docker://registry.example/quarry-coordinator:0.1.0
#
# Each image is one layer: the binary in /usr/local/bin, the exact shared libraries `ldd`
# reports for it (copied from the build machine, so build on the distribution you release
# from: Debian 12 for Quarry's releases), /etc/passwd and /etc/group with the unprivileged
# user 65532 the images run as, /tmp, and for the coordinator /var/lib/quarry (0700, 65532).
# Files are root-owned, 0755 (binaries, directories) or 0644, sorted, mtime SOURCE_DATE_EPOCH.
set -euo pipefail
export LC_ALL=C TZ=UTC
umask 022

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=$repo/target/release
out=$repo/target/oci
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in umoci python3 ldd sha256sum; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install umoci python3 libc-bin coreutils)" >&2; exit 1; }
done
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null) || {
    echo "error: set SOURCE_DATE_EPOCH (no git history to take it from)" >&2; exit 1; }
fi
case $SOURCE_DATE_EPOCH in ''|*[!0-9]*) echo "error: SOURCE_DATE_EPOCH must be Unix seconds" >&2; exit 1 ;; esac
export SOURCE_DATE_EPOCH
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Shared libraries of a binary, as absolute paths (ldd's view on this machine).
libs_of() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' | sort -u
}

# Writes the layer tar for one image: layer_tar OUT.tar BINARY [EXTRA-DIR:UID:MODE]...
layer_tar() {
  local tar=$1 binary=$2; shift 2
  local spec=$work/spec.txt
  {
    echo "file /usr/local/bin/$(basename "$binary") 0:0 0755 $binary"
    libs_of "$binary" | while read -r lib; do
      [ -e "$lib" ] || { echo "error: $lib (needed by $binary) not found" >&2; exit 1; }
      echo "file $lib 0:0 0755 $(readlink -f "$lib")"
    done
    echo "data /etc/passwd 0:0 0644 root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
    echo "data /etc/group 0:0 0644 root:x:0:\nnonroot:x:65532:\n"
    echo "dir /tmp 0:0 1777"
    echo "dir /home/nonroot 65532:65532 0700"
    for d in "$@"; do
      IFS=: read -r path owner mode <<<"$d"
      echo "dir $path $owner:$owner $mode"
    done
  } > "$spec"
  python3 - "$spec" "$tar" <<'PY'
# Deterministic tar: entries sorted by path, every parent directory present, fixed mtime,
# numeric owners and modes from the spec, no user/group names, ustar format.
import io, os, sys, tarfile
spec, out = sys.argv[1], sys.argv[2]
mtime = int(os.environ["SOURCE_DATE_EPOCH"])
entries = {}
for line in open(spec, encoding="utf-8"):
    kind, path, owner, mode, *rest = line.rstrip("\n").split(" ", 4)
    uid, gid = (int(x) for x in owner.split(":"))
    entries[path.lstrip("/")] = (kind, uid, gid, int(mode, 8), rest[0] if rest else None)
for path in list(entries):
    parent = os.path.dirname(path)
    while parent and parent not in entries:
        entries[parent] = ("dir", 0, 0, 0o755, None)
        parent = os.path.dirname(parent)
with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for path in sorted(entries):
        kind, uid, gid, mode, src = entries[path]
        info = tarfile.TarInfo(path)
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        info.mode, info.mtime = mode, mtime
        if kind == "dir":
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            data = open(src, "rb").read() if kind == "file" else src.encode().decode("unicode_escape").encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
PY
}

rm -rf "$out"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"

build_image() {
  local tag=$1 bin=$2; shift 2
  local binary=$bin_dir/$bin
  [ -x "$binary" ] || { echo "error: $binary missing; run: cargo build --release --locked -p quarry-coordinator -p marble-sidecar -p quarry-cli" >&2; exit 1; }
  local extra_dirs=() config=()
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) extra_dirs+=("$2"); shift 2 ;;
      *) config+=("$1"); shift ;;
    esac
  done
  layer_tar "$work/$tag.tar" "$binary" "${extra_dirs[@]}"
  umoci new --image "$out:$tag"
  umoci raw add-layer --image "$out:$tag" \
    --history.created "$created" --history.created_by "deploy/oci/build.sh $tag" \
    "$work/$tag.tar"
  umoci config --no-history --image "$out:$tag" \
    --created "$created" --architecture amd64 --os linux \
    --config.user 65532:65532 --config.workingdir /home/nonroot \
    --config.entrypoint "/usr/local/bin/$bin" \
    --config.label "org.opencontainers.image.title=$tag" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.created=$created" \
    "${config[@]}"
}

build_image quarry-coordinator quarry-coordinator \
  --dir /var/lib/quarry:65532:0700 \
  --config.env QUARRY_DATA_DIR=/var/lib/quarry \
  --config.exposedports 4433/tcp --config.exposedports 2001/tcp --config.exposedports 9100/tcp \
  --config.volume /var/lib/quarry
build_image marble-sidecar marble-sidecar
build_image quarry-cli quarry
umoci gc --layout "$out"

python3 - "$out" > "$out/digests.txt" <<'PY'
import json, sys
index = json.load(open(sys.argv[1] + "/index.json"))
for m in sorted(index["manifests"], key=lambda m: m["annotations"]["org.opencontainers.image.ref.name"]):
    print(m["annotations"]["org.opencontainers.image.ref.name"], m["digest"])
PY
cat "$out/digests.txt"
