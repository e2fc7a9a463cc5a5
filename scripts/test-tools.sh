#!/usr/bin/env bash
# Tools some tests drive, from Debian's packages: Chromium (the dashboard's browser test),
# promtool (checks the Prometheus config and the Grafana dashboard's queries) and
# rabbitmq-server (tests/cluster starts a 3-node cluster of its own from it).
# Installs what is missing; without root or apt, says so (the browser and monitoring tests
# skip, the cluster tests fail).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) to run every test" >&2
  exit 0
fi
echo "installing ${missing[*]} for the browser and monitoring tests"
apt-get update -qq >/dev/null
# policy-rc.d keeps the packages from starting servers of their own.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
