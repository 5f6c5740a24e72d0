# Sourced by scripts/test.sh, scripts/check-no-protoc.sh and .ci/run: installs the Debian
# packages a step needs when their commands are missing, or stops with one line naming what
# is missing and how to get it.
#
#   need COMMAND PACKAGE WHY   queue PACKAGE unless COMMAND is on PATH
#   need_file PATH PACKAGE WHY queue PACKAGE unless PATH exists
#   provision                  install everything queued (apt-get as root, or sudo -n)

_quarry_pkgs=()
_quarry_why=()

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  _quarry_pkgs+=("$2")
  _quarry_why+=("$1 ($3)")
}

need_file() {
  [ -e "$1" ] && return 0
  _quarry_pkgs+=("$2")
  _quarry_why+=("$1 ($3)")
}

provision() {
  [ ${#_quarry_pkgs[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      sudo=(none)
    fi
  fi
  local missing
  missing=$(IFS=,; echo "${_quarry_why[*]}")
  if ! command -v apt-get >/dev/null 2>&1 || [ "${sudo[0]:-}" = none ]; then
    echo "error: missing ${missing}: install the Debian packages ${_quarry_pkgs[*]} (apt-get install ${_quarry_pkgs[*]}), or run this as root so it can" >&2
    exit 1
  fi
  echo "== installing ${_quarry_pkgs[*]} (missing: ${missing})"
  if ! { "${sudo[@]}" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${_quarry_pkgs[@]}"; } >/tmp/quarry-apt.log 2>&1; then
    echo "error: apt-get could not install ${_quarry_pkgs[*]} (missing: ${missing}); its output is in /tmp/quarry-apt.log" >&2
    exit 1
  fi
  _quarry_pkgs=()
  _quarry_why=()
}

# The shared fixtures (real MarbleRun manifests, hardware evidence) cannot be installed: they
# come with the team's shared directory.
need_shared_fixtures() {
  local dir="${QUARRY_SHARED_DIR:-../shared}"
  if [ ! -d "$dir/testdata" ]; then
    echo "error: missing the shared test fixtures $dir/testdata: check out the team's shared directory beside the repository (../shared) or set QUARRY_SHARED_DIR to it" >&2
    exit 1
  fi
}

need_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  echo "error: missing cargo: install the Rust toolchain with rustup (https://rustup.rs)" >&2
  exit 1
}
