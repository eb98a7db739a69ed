#!/usr/bin/env bash
# Offline checks of the systemd units, sysusers and tmpfiles snippets.
# Needs systemd's tools (systemd-analyze, systemd-sysusers, systemd-tmpfiles)
# but not a running systemd: nothing is installed into the host, everything
# happens in a temporary folder that is removed afterwards.
#
#   bash deploy/systemd/check.sh
#
# 1. `systemd-analyze verify` on copies of the units whose ExecStart points
#    at stub executables (verify insists that ExecStart binaries exist);
#    any diagnostic about a unit (unknown key, bad value) fails the check.
# 2. `systemd-analyze security --offline` keeps the hardening from
#    regressing: the exposure score must stay at or below 2.0.
# 3. As root: sysusers and tmpfiles applied to an empty root in the
#    temporary folder (--root), and the units' User=/Group= exist there.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
units=(dr-agent.service dr-witness.service)
max_exposure=20   # systemd-analyze's threshold unit: 20 = exposure 2.0

if ! command -v systemd-analyze >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "systemd/check: installing systemd's tools (Debian package systemd)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  else
    echo "systemd/check: systemd-analyze not found (install the systemd package)" >&2
    exit 1
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/units"
fail=0

# Stub every /usr/local/bin executable the units name and point the copies at them.
for u in "${units[@]}"; do
  grep -q '^ExecStart=/usr/local/bin/' "$here/$u" || {
    echo "FAIL $u: ExecStart is not under /usr/local/bin (where the image and README install it)" >&2
    fail=1
  }
  while read -r bin; do
    printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/$bin"
    chmod 0755 "$tmp/bin/$bin"
  done < <(sed -nE 's#^Exec[A-Za-z]*=[-@:+!]*/usr/local/bin/([^ ]+).*#\1#p' "$here/$u")
  sed -E "s#^(Exec[A-Za-z]*=[-@:+!]*)/usr/local/bin/#\1$tmp/bin/#" "$here/$u" >"$tmp/units/$u"
done

echo "systemd/check: systemd-analyze verify ${units[*]}"
set +e
(cd "$tmp/units" && systemd-analyze verify --man=no --recursive-errors=no "${units[@]/#/./}") >"$tmp/verify.log" 2>&1
rc=$?
set -e
sed "s#$tmp/units/##g; s#$tmp/bin/#/usr/local/bin/#g" "$tmp/verify.log"
if [ "$rc" -ne 0 ]; then
  echo "FAIL systemd-analyze verify exited $rc" >&2
  fail=1
elif grep -qE "$(IFS='|'; echo "${units[*]}")" "$tmp/verify.log"; then
  echo "FAIL systemd-analyze verify reported a problem in a unit (above)" >&2
  fail=1
else
  echo "ok   verify: no diagnostics"
fi

for u in "${units[@]}"; do
  set +e
  score=$(systemd-analyze security --offline=true --threshold="$max_exposure" "$tmp/units/$u" 2>&1)
  rc=$?
  set -e
  line=$(grep -o 'Overall exposure level.*' <<<"$score" | sed "s#$tmp/units/##")
  if [ "$rc" -ne 0 ]; then
    echo "$score" | grep '✗' >&2 || true
    echo "FAIL $u: ${line:-no score} (must be <= $((max_exposure / 10)).$((max_exposure % 10)))" >&2
    fail=1
  else
    echo "ok   security: $line"
  fi
done

if [ "$(id -u)" -eq 0 ]; then
  root="$tmp/root"
  mkdir -p "$root/etc"
  if systemd-sysusers --root="$root" "$here/milvus-dr.sysusers" >"$tmp/sysusers.log" 2>&1; then
    echo "ok   sysusers: $(cut -d: -f1,3,4,6,7 "$root/etc/passwd" | tr '\n' ' ')"
  else
    cat "$tmp/sysusers.log" >&2
    echo "FAIL systemd-sysusers on milvus-dr.sysusers" >&2
    fail=1
  fi
  for u in "${units[@]}"; do
    for key in User Group; do
      name=$(sed -n "s/^$key=//p" "$here/$u")
      file=passwd
      [ "$key" = Group ] && file=group
      if ! grep -q "^$name:" "$root/etc/$file" 2>/dev/null; then
        echo "FAIL $u: $key=$name is not created by milvus-dr.sysusers" >&2
        fail=1
      fi
    done
  done
  if systemd-tmpfiles --root="$root" --create "$here/milvus-dr.tmpfiles" >"$tmp/tmpfiles.log" 2>&1; then
    echo "ok   tmpfiles: $(cd "$root" && find etc/milvus-dr var -type d -printf '/%p ' | sort)"
  else
    cat "$tmp/tmpfiles.log" >&2
    echo "FAIL systemd-tmpfiles on milvus-dr.tmpfiles" >&2
    fail=1
  fi
else
  echo "skip sysusers/tmpfiles: they chown, which needs root"
fi

if [ "$fail" -ne 0 ]; then
  echo "systemd/check: FAILED" >&2
  exit 1
fi
echo "systemd/check: all passed"
