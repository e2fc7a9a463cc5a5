#!/usr/bin/env bash
# Tools some tests drive, from Debian's packages: Chromium (the dashboard's browser test)
# and promtool (checks the Prometheus config and the Grafana dashboard's queries).
# Installs what is missing; without root or apt, says so and leaves those tests to skip.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) to run every test" >&2
  exit 0
fi
echo "installing ${missing[*]} for the browser and monitoring tests"
apt-get update -qq >/dev/null
# policy-rc.d keeps the prometheus package from starting a server of its own.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
