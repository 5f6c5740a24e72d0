#!/usr/bin/env bash
# Computes the launch-time value that binds a confidential pod's policy document into its
# hardware evidence, the way Kata Containers / Confidential Containers set it:
#   SEV-SNP  HOST_DATA   (32 bytes) = digest of the policy document
#   TDX      MRCONFIGID  (48 bytes) = digest of the policy document, right-padded with zero
#                                     bytes to 48 (a SHA-256 digest gets 16 zero bytes)
# The digest is over the exact bytes of the document Kata hands to the guest: the agent
# policy (Rego text, the base64-decoded value of the pod annotation
# io.katacontainers.config.agent.policy), or the Confidential Containers init-data TOML (the
# base64-decoded, gunzipped value of io.katacontainers.config.hypervisor.cc_init_data), with
# the algorithm the init-data names (`algorithm = "sha256"|"sha384"|"sha512"`; the agent
# policy always uses sha256). A digest longer than the field is refused, never truncated.
#
# Usage:
#   deploy/cvm/host-data.sh [--tee snp|tdx] [--alg sha256|sha384|sha512] [--json] FILE|-
#   deploy/cvm/host-data.sh --annotation [--gzip] [--tee ...] [--alg ...] FILE|-
#     --annotation  FILE holds the annotation value (base64) rather than the document
#     --gzip        the decoded annotation is gzip-compressed (cc_init_data)
#     --json        print the Quarry manifest package fragment instead of bare hex (SNP only:
#                   Quarry manifests have no MRCONFIGID field yet)
# Default: --tee snp --alg sha256. Output: lowercase hex of the field (or JSON), one line.
#
# Examples:
#   deploy/cvm/host-data.sh policy.rego
#   kubectl get pod db -o jsonpath='{.metadata.annotations.io\.katacontainers\.config\.agent\.policy}' \
#     | deploy/cvm/host-data.sh --annotation -
#   deploy/cvm/host-data.sh --tee tdx --alg sha384 initdata.toml
set -euo pipefail
tee=snp alg=sha256 annotation=0 gzip=0 json=0 file=
while [ $# -gt 0 ]; do
  case $1 in
    --tee) tee=$2; shift 2 ;;
    --alg) alg=$2; shift 2 ;;
    --annotation) annotation=1; shift ;;
    --gzip) gzip=1; shift ;;
    --json) json=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -) file=-; shift ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) file=$1; shift ;;
  esac
done
[ -n "$file" ] || { echo "error: name the policy document (or - for stdin); see --help" >&2; exit 2; }
case $alg in sha256) dlen=32 ;; sha384) dlen=48 ;; sha512) dlen=64 ;;
  *) echo "error: --alg must be sha256, sha384 or sha512" >&2; exit 2 ;; esac
case $tee in snp) flen=32 ;; tdx) flen=48 ;;
  *) echo "error: --tee must be snp or tdx" >&2; exit 2 ;; esac
if [ "$dlen" -gt "$flen" ]; then
  echo "error: a $alg digest ($dlen bytes) does not fit the $tee field ($flen bytes)" >&2
  exit 1
fi
[ "$gzip" = 0 ] || [ "$annotation" = 1 ] || { echo "error: --gzip needs --annotation" >&2; exit 2; }

read_doc() {
  if [ "$file" = - ]; then cat; else cat -- "$file"; fi
}
if [ "$annotation" = 1 ]; then
  decode() { tr -d ' \n\r\t' | base64 -d; }
  if [ "$gzip" = 1 ]; then
    digest=$(read_doc | decode | gzip -dc | "${alg}sum" | cut -d' ' -f1)
  else
    digest=$(read_doc | decode | "${alg}sum" | cut -d' ' -f1)
  fi
else
  digest=$(read_doc | "${alg}sum" | cut -d' ' -f1)
fi
value=$digest$(head -c $(( (flen - dlen) * 2 )) /dev/zero | tr '\0' 0)
if [ "$json" = 1 ]; then
  if [ "$tee" = tdx ]; then
    echo "error: Quarry manifests have no MRCONFIGID field yet (docs/DEPLOY-CVM.md); print the hex without --json" >&2
    exit 1
  fi
  printf '{"TEE":"snp","HostData":"%s"}\n' "$value"
else
  echo "$value"
fi
