#!/usr/bin/env bash
# Start PostgreSQL and RabbitMQ if they are not answering; leave them alone if they are.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for() {
  local name=$1 check=$2
  for _ in $(seq 1 60); do
    if $check; then return 0; fi
    sleep 1
  done
  echo "$name did not come up" >&2
  return 1
}

if ! pg_up; then
  echo "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  else
    echo "PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is missing" >&2
    exit 1
  fi
  wait_for PostgreSQL pg_up
fi

if ! rabbit_up; then
  echo "starting RabbitMQ"
  if command -v rabbitmq-server >/dev/null; then
    rabbitmq-server -detached
  else
    echo "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is missing" >&2
    exit 1
  fi
  wait_for RabbitMQ rabbit_up
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
echo "PostgreSQL and RabbitMQ are up"
