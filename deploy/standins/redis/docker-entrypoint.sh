#!/bin/sh
# What the official redis image's entrypoint does, for the Debian stand-in.
set -e

# `docker run redis:7-alpine --maxmemory 256mb` (options only, or a .conf) means redis-server.
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi

if [ "$1" = redis-server ]; then
  # The official image compiles protected mode off: other containers may connect.
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
  # Started as root: own /data, then run as the redis user (the official image uses su-exec).
  if [ "$(id -u)" = 0 ]; then
    find . ! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi

exec "$@"
