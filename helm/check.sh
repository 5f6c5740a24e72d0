#!/usr/bin/env bash
# Chart checks: render helm/quarry with the real Helm v4 library (PyPI helm-python-sdk), lint
# it, and validate every rendered object with kubernetes-validate against a current
# Kubernetes version, for the default values, each TEE mode and the XFSC OCM values.
#
#   helm/check.sh                 # uses python3 from PATH; needs the two PyPI packages
#   PYTHON=/path/to/venv/bin/python helm/check.sh
#   KUBE_VERSION=1.36.0 helm/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" helm/check.py "$@"
