#!/bin/sh
# As the official image's entrypoint: arguments that start with `-` are redis-server's; without
# a config file protected mode is off (the compose network is the guard; set --requirepass);
# the server runs as redis in /data and logs to the console.
set -eu
case "${1:-}" in -*) set -- redis-server "$@" ;; esac
if [ "${1:-}" = redis-server ]; then
  shift
  chown -R redis:redis /data
  case "${1:-}" in
    *.conf) ;;
    *) set -- --protected-mode no "$@" ;;
  esac
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$@"
fi
exec "$@"
