#!/usr/bin/env bash
# Tools some tests drive, from Debian's packages: Chromium (the dashboard's browser test),
# promtool (checks the Prometheus config and the Grafana dashboard's queries),
# rabbitmq-server (tests/cluster and `bench/soak.py --cluster` start a 3-node cluster of their
# own from it), the PostgreSQL server binaries (tests/faults/test_database_failover.py starts a
# primary and a standby of its own with initdb and pg_ctl) and redis-server.
# Installs only what is missing, as root with apt-get; what is present is never passed to apt.
# Without root or apt, says what is missing (the browser and monitoring tests skip, the
# cluster and failover tests fail).
#
# TEST_TOOLS_DRY_RUN=1 prints what it would install and installs nothing; TEST_TOOLS_PREFIX
# looks for the tools under another root (for the script's own test).
set -euo pipefail
prefix=${TEST_TOOLS_PREFIX:-}
has() { [ -x "$prefix$1" ]; }
has_postgres() { compgen -G "$prefix/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

missing=()
has /usr/bin/chromium || missing+=(chromium)
has /usr/bin/promtool || missing+=(prometheus)
has /usr/lib/rabbitmq/bin/rabbitmq-server || missing+=(rabbitmq-server)
has_postgres || missing+=(postgresql)
has /usr/bin/redis-server || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${TEST_TOOLS_DRY_RUN:-0}" = 1 ]; then
  echo "would install: ${missing[*]}"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) to run every test" >&2
  exit 0
fi
echo "installing ${missing[*]} for the browser, monitoring, cluster and failover tests"
apt-get update -qq >/dev/null
# policy-rc.d keeps the packages from starting servers of their own (scripts/services.sh
# starts the ones the suite shares).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
