#!/usr/bin/env bash
# CI check of host-data.sh against digests computed independently (sha256sum / sha384sum of
# the same bytes, by hand): plain document, base64 annotation, gzip+base64 annotation, TDX
# padding, and the refusals (digest too long for the field).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
printf 'package agent_policy\ndefault AllowRequestsFailingPolicy := false\n' > "$t/policy.rego"
want256=$(sha256sum "$t/policy.rego" | cut -d' ' -f1)
want384=$(sha384sum "$t/policy.rego" | cut -d' ' -f1)
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$("$here/host-data.sh" "$t/policy.rego")" = "$want256" ] || fail "snp sha256 of the document"
[ "$(base64 -w0 "$t/policy.rego" | "$here/host-data.sh" --annotation -)" = "$want256" ] || fail "base64 annotation"
[ "$(gzip -nc "$t/policy.rego" | base64 | "$here/host-data.sh" --annotation --gzip -)" = "$want256" ] || fail "gzip+base64 annotation"
[ "$("$here/host-data.sh" --tee tdx "$t/policy.rego")" = "${want256}00000000000000000000000000000000" ] || fail "tdx padding"
[ "$("$here/host-data.sh" --tee tdx --alg sha384 "$t/policy.rego")" = "$want384" ] || fail "tdx sha384"
[ "$("$here/host-data.sh" --json "$t/policy.rego")" = "{\"TEE\":\"snp\",\"HostData\":\"$want256\"}" ] || fail "json"
if "$here/host-data.sh" --alg sha384 "$t/policy.rego" 2>/dev/null; then fail "sha384 accepted for SNP"; fi
if "$here/host-data.sh" --tee tdx --alg sha512 "$t/policy.rego" 2>/dev/null; then fail "sha512 accepted for TDX"; fi
echo "host-data.sh: all cases match"
