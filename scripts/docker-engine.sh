#!/bin/sh
# A Docker engine for the compose tests: `up` starts one if none answers, `down` stops it again.
#   scripts/docker-engine.sh up     prints `running` (one answered already) or `started`
#   scripts/docker-engine.sh down   stops the engine `up` started, and only that one
# With CONVEYOR_DOCKER_INSTALL=1 (CI sets it), `up` installs Debian's docker.io and
# docker-compose (v1; Debian 12 has no v2 plugin) when they are missing. Starting and
# installing need root. Exit 3: no engine answers and none can be started (the reason on stderr).
set -eu
PIDFILE=${CONVEYOR_DOCKERD_PIDFILE:-/var/run/conveyor-test-dockerd.pid}
LOG=${CONVEYOR_DOCKERD_LOG:-/var/log/conveyor-test-dockerd.log}
POLICY=$PIDFILE.forward-policy

say() { echo "docker-engine: $*" >&2; }
answers() { docker info >/dev/null 2>&1; }
has_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }

restore_forward_policy() {
  case "$(cat "$POLICY" 2>/dev/null)" in *ACCEPT*) iptables -P FORWARD ACCEPT ;; esac
  rm -f "$POLICY"
}

up() {
  if command -v docker >/dev/null && has_compose && answers; then echo running; return; fi
  if [ "$(id -u)" != 0 ]; then
    say "no Docker engine answers (docker info) and starting one needs root"; exit 3
  fi
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! has_compose; then
    if [ "${CONVEYOR_DOCKER_INSTALL:-0}" != 1 ] || ! command -v apt-get >/dev/null; then
      say "Docker is not installed (dockerd, docker and docker compose or docker-compose):" \
        "apt-get install docker.io docker-compose"
      exit 3
    fi
    say "installing docker.io and docker-compose"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose >/dev/null
  fi
  if answers; then echo running; return; fi
  # dockerd sets the FORWARD policy to DROP; `down` puts back what was there.
  iptables -S FORWARD 2>/dev/null | head -1 > "$POLICY" || true
  # Containers must not send packets larger than the host's own link takes (some VMs: 1400).
  iface=$(ip route show default 2>/dev/null | awk '{print $5; exit}')
  mtu=$(cat "/sys/class/net/${iface:-eth0}/mtu" 2>/dev/null || echo 1500)
  setsid dockerd --log-level=warn --mtu="$mtu" -p "$PIDFILE" </dev/null >"$LOG" 2>&1 &
  daemon=$!
  for _ in $(seq 60); do
    if answers; then echo started; return; fi
    kill -0 "$daemon" 2>/dev/null || break
    sleep 1
  done
  kill "$daemon" 2>/dev/null || true # leave no half-started engine behind
  restore_forward_policy
  say "dockerd did not come up; the end of $LOG:"
  tail -20 "$LOG" >&2
  say "$(tail -1 "$LOG")"
  exit 3
}

down() {
  [ -f "$PIDFILE" ] || { say "no engine of ours to stop"; return; }
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  restore_forward_policy
  rm -f "$PIDFILE"
  say "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
