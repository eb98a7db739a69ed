#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (no cluster, no network
# beyond PyPI for the first install).
#
#   bash deploy/kubernetes/check.sh
#
# Installs, once, kubernetes-validate (the Kubernetes OpenAPI schemas of
# every recent release ship inside the package) into the venv
# ${MILVUS_DR_VENV:-$HOME/.cache/milvus-dr/venv}. Then:
#   1. `kubectl kustomize` renders kustomization.yaml, when kubectl is on
#      PATH (kubectl works offline for this); skipped otherwise.
#   2. check_manifests.py: strict schema validation of every manifest and
#      of the rendered output (cert-manager.io resources skipped: no
#      schema), then consistency between configs, mounts, ports, Services,
#      StatefulSet identities and Certificates.
#   3. dr-agent/dr-witness --check on every config in the ConfigMaps, when
#      the binaries are found (PATH, $MILVUS_DR_BIN_DIR or the cargo target
#      dir); skipped otherwise: this script never builds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="${MILVUS_DR_VENV:-$HOME/.cache/milvus-dr/venv}"
pins=(kubernetes-validate==1.37.0)

if [ ! -x "$venv/bin/python" ]; then
  echo "kubernetes/check: creating the venv $venv"
  python3 -m venv "$venv"
fi
for pin in "${pins[@]}"; do
  name=${pin%%==*} want=${pin##*==}
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    echo "kubernetes/check: installing $pin into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$pin"
  fi
done
# PyYAML for the cross-checks: any version the venv already has will do.
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "kubernetes/check: installing PyYAML into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check PyYAML
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL $*" >&2; fail=1; }

rendered=()
if command -v kubectl >/dev/null; then
  if kubectl kustomize "$here" >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
    echo "ok   kubectl kustomize: $(grep -c '^kind:' "$tmp/rendered.yaml") resources"
    rendered=("$tmp/rendered.yaml")
  else
    cat "$tmp/kustomize.err" >&2
    bad "kubectl kustomize deploy/kubernetes"
  fi
else
  echo "skip kubectl kustomize: kubectl not on PATH (the manifests are still checked one by one)"
fi

"$venv/bin/python" "$here/check_manifests.py" "$here" "${rendered[@]}" --configs "$tmp/configs" \
  || bad "manifests (above)"

find_bin() {
  local b=$1 d
  for d in ${MILVUS_DR_BIN_DIR:+"$MILVUS_DR_BIN_DIR"} \
           "${CARGO_TARGET_DIR:-$HOME/.cache/milvus-dr/target}/release" \
           "${CARGO_TARGET_DIR:-$HOME/.cache/milvus-dr/target}/debug" \
           "$root/target/release" "$root/target/debug"; do
    [ -x "$d/$b" ] && { echo "$d/$b"; return; }
  done
  command -v "$b" || true
}
for kind in agent witness; do
  bin=$(find_bin "dr-$kind")
  for f in "$tmp/configs/$kind"/*.yaml; do
    [ -e "$f" ] || continue
    label=$(basename "$f" .yaml)
    label="ConfigMap ${label%%--*} key ${label#*--}.yaml"
    if [ -z "$bin" ]; then
      echo "skip dr-$kind --check $label: binary not built (set MILVUS_DR_BIN_DIR)"
    elif out=$("$bin" --config "$f" --check 2>&1); then
      echo "ok   dr-$kind --check $label: ${out#*: }"
    else
      echo "$out" >&2
      bad "dr-$kind --check $label"
    fi
  done
done

if [ "$fail" -ne 0 ]; then
  echo "kubernetes/check: FAILED" >&2
  exit 1
fi
echo "kubernetes/check: all passed"
