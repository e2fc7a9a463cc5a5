#!/bin/sh
# Build, from Debian's packages alone, images under the names docker-compose.yml and the
# Dockerfile pull, for a machine with a Docker engine and a Debian mirror but no image
# registry (an air-gapped CI). The project's Dockerfile and compose file then run unchanged.
#   deploy/offline-images/build.sh                     every image below (as root)
#   deploy/offline-images/build.sh python postgres     only these
#   deploy/offline-images/build.sh mailpit=axllent/mailpit:v1.21   under another tag
# Default tag               built from                               folder
#   python:3.11-slim          Debian's python3.11 + venv               python/
#   postgres:16               Debian's PostgreSQL 15, POSTGRES_* env    postgres/
#   rabbitmq:3.13-management  Debian's RabbitMQ 3.10 + management      rabbitmq/
#   redis:7.2                 Debian's Redis 7.0                       redis/
#   axllent/mailpit:v1.21.8   an SMTP sink + Mailpit's messages API    mailpit/
#   prom/prometheus:v2.53.2   Debian's Prometheus 2.42                 prometheus/
# They prove the wiring (build, commands, healthchecks, networks, volumes, environment), not
# the upstream images' versions. There is no Grafana stand-in.
# CACHE (default /var/tmp/conveyor-offline-images) keeps the debootstrap root file system;
# the engine's build cache keeps the rest, so a second run takes seconds.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${CONVEYOR_OFFLINE_CACHE:-/var/tmp/conveyor-offline-images}
BASE=conveyor-offline/debian:bookworm
# The legacy builder: it needs no buildx plugin and never asks a registry for a frontend.
export DOCKER_BUILDKIT=0
mkdir -p "$CACHE"

tag_of() {
  case "$1" in
    python) echo python:3.11-slim ;;
    postgres) echo postgres:16 ;;
    rabbitmq) echo rabbitmq:3.13-management ;;
    redis) echo redis:7.2 ;;
    mailpit) echo axllent/mailpit:v1.21.8 ;;
    prometheus) echo prom/prometheus:v2.53.2 ;;
    *) echo "unknown image: $1 (python, postgres, rabbitmq, redis, mailpit, prometheus)" >&2; exit 2 ;;
  esac
}

mirror() {
  found=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$found" ] || found=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${CONVEYOR_DEBIAN_MIRROR:-${found:-http://deb.debian.org/debian}}"
}

# A Debian base from debootstrap, imported once: a new import would rebuild every image on it.
base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return
  command -v debootstrap >/dev/null || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
  } >/dev/null
  rootfs="$CACHE/rootfs"
  if [ ! -d "$rootfs/usr" ]; then
    rm -rf "$rootfs.tmp"
    debootstrap --variant=minbase bookworm "$rootfs.tmp" "$(mirror)" >/dev/null
    mv "$rootfs.tmp" "$rootfs"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  : > "$rootfs/etc/resolv.conf"
  # A mirror snapshot's Release file may be older than its Valid-Until.
  printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
    > "$rootfs/etc/apt/apt.conf.d/99no-valid-until"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$rootfs/etc/apt/apt.conf.d/99no-recommends"
  tar -C "$rootfs" -c . | docker import \
    -c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8" \
    -c 'CMD ["bash"]' - "$BASE" >/dev/null
}

# Each image from a copy of its folder, so the checkout stays clean (and may be read-only).
build() {  # FOLDER[=TAG]
  folder=${1%%=*}
  tag=$(tag_of "$folder")
  case "$1" in *=*) tag=${1#*=} ;; esac
  # A context of this run's own: two runs at once do not pull a folder from under each other.
  context="$CACHE/context-$folder-$$"
  rm -rf "$context"
  cp -r "$here/$folder" "$context"
  # pip inside image builds trusts what the host trusts (a TLS-inspecting proxy, say).
  if [ "$folder" = python ]; then cp /etc/ssl/certs/ca-certificates.crt "$context/host-ca-bundle.crt"; fi
  start=$(date +%s)
  if ! docker build --label io.conveyor.offline-image=true -t "$tag" "$context" >"$context.log" 2>&1; then
    tail -30 "$context.log" >&2
    exit 1
  fi
  rm -rf "$context" "$context.log"
  echo "$tag ready ($(($(date +%s) - start)) s)"
}

[ $# -gt 0 ] || set -- python postgres rabbitmq redis mailpit prometheus
for name in "$@"; do tag_of "${name%%=*}" >/dev/null; done
base
# The images do not build on each other: built at once, one's downloads overlap another's
# unpacking and configuring.
pids=""
for name in "$@"; do
  build "$name" &
  pids="$pids $!"
done
failed=0
for pid in $pids; do wait "$pid" || failed=1; done
exit "$failed"
