#!/usr/bin/env bash
# Checks every deployment kit offline (the test command runs it): systemd
# units, the container image and compose file, the Kubernetes manifests,
# and the monitoring rules and dashboard. Each check installs its own tools
# (Debian packages, or PyPI packages into $MILVUS_DR_VENV) on first run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for kit in systemd container kubernetes monitoring; do
  echo "deploy/check: $kit"
  bash "$here/$kit/check.sh"
done
echo "deploy/check: every kit checks"
