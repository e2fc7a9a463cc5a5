#!/usr/bin/env bash
# Make PostgreSQL (5432), RabbitMQ (5672) and Redis (6379) answer on 127.0.0.1; leave alone
# whatever already answers. A service that is installed but stopped is started. What is not
# installed is installed from the distribution's packages when we may (root on Debian or
# Ubuntu); otherwise `docker compose up -d postgres rabbitmq` where a Docker engine answers;
# otherwise one message says which of the two to do.
#
# SERVICES_DRY_RUN=1 says what it would do and does nothing; PG_PORT, RABBIT_PORT and
# REDIS_PORT check other ports (to try it beside running services).
set -euo pipefail

PG_PORT=${PG_PORT:-5432}
RABBIT_PORT=${RABBIT_PORT:-5672}
REDIS_PORT=${REDIS_PORT:-6379}
DRY_RUN=${SERVICES_DRY_RUN:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pg_up() { answers "$PG_PORT"; }
rabbit_up() { answers "$RABBIT_PORT"; }
redis_up() { answers "$REDIS_PORT"; }

run() {
  if [ "$DRY_RUN" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

wait_for() {
  local name=$1 check=$2
  [ "$DRY_RUN" = 1 ] && return 0
  for _ in $(seq 1 60); do
    if $check; then return 0; fi
    sleep 1
  done
  echo "$name did not come up" >&2
  return 1
}

# -- what is down, and which of those are not installed -------------------------------------
down=() missing=() packages=()
pg_up || { down+=(PostgreSQL); command -v pg_ctlcluster >/dev/null || { missing+=(PostgreSQL); packages+=(postgresql); }; }
rabbit_up || { down+=(RabbitMQ); command -v rabbitmq-server >/dev/null || { missing+=(RabbitMQ); packages+=(rabbitmq-server); }; }
redis_up || { down+=(Redis); command -v redis-server >/dev/null || { missing+=(Redis); packages+=(redis-server); }; }

if [ ${#down[@]} -eq 0 ]; then
  echo "PostgreSQL, RabbitMQ and Redis are up"
  exit 0
fi

fresh_postgres=0
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} from the distribution's packages: ${packages[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
    [[ " ${packages[*]} " == *" postgresql "* ]] && fresh_postgres=1
  elif docker info >/dev/null 2>&1; then
    echo "${missing[*]} not installed here; starting them with Docker Compose"
    (cd "$ROOT" && run docker compose up -d postgres rabbitmq)
    wait_for PostgreSQL pg_up
    wait_for RabbitMQ rabbit_up
    echo "PostgreSQL and RabbitMQ are up (in containers)"
    exit 0
  else
    echo "${missing[*]} not installed and not running. Either install them (as root on Debian or" \
      "Ubuntu: apt-get install -y ${packages[*]}, or run this script as root), or start them with" \
      "Docker: docker compose up -d postgres rabbitmq" >&2
    exit 1
  fi
fi

# -- start what is installed and stopped ----------------------------------------------------
if ! pg_up; then
  echo "starting PostgreSQL"
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$version" ] && [ "$DRY_RUN" != 1 ]; then
    echo "PostgreSQL is installed but has no cluster in /etc/postgresql" >&2
    exit 1
  fi
  if [ "$fresh_postgres" = 1 ]; then
    # A cluster made just now, for development: the postgres user connects over loopback
    # without a password, as DATABASE_URL's default expects.
    hba=/etc/postgresql/${version:-VERSION}/main/pg_hba.conf
    echo "a new development cluster: trust for 127.0.0.1 and ::1 in $hba"
    run sed -i -E 's/^(host +all +all +(127\.0\.0\.1\/32|::1\/128) +)[a-z0-9-]+/\1trust/' "$hba"
  fi
  run pg_ctlcluster --skip-systemctl-redirect "${version:-VERSION}" main start
  wait_for PostgreSQL pg_up
fi

if ! rabbit_up; then
  echo "starting RabbitMQ"
  run rabbitmq-server -detached
  wait_for RabbitMQ rabbit_up
  [ "$DRY_RUN" = 1 ] || rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

if ! redis_up; then
  echo "starting Redis"
  run redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no
  wait_for Redis redis_up
fi
echo "PostgreSQL, RabbitMQ and Redis are up"
