#!/usr/bin/env bash
# Make a Docker engine available to the project's make targets and scripts.
#
#   scripts/docker-engine.sh run [--optional] -- CMD [ARG...]
#       Run CMD with DOCKER_HOST pointing at a working engine. If this call had to start a daemon,
#       it stops it again when CMD ends (make targets leave no daemon of theirs running). With
#       --optional a machine that cannot run Docker still runs CMD, without an engine (the
#       docker-marked tests then skip, or fail under CI=true, with their reason).
#   eval "$(scripts/docker-engine.sh start)"
#       Make sure an engine runs and print the `export DOCKER_HOST=...` line for it (and, on
#       stderr, how to stop it). For interactive use; the daemon keeps running.
#   scripts/docker-engine.sh stop
#       Stop the daemon this script started (its pid file names it); never any other daemon.
#   scripts/docker-engine.sh status
#       Which engine `run` would use, and whether this script's daemon is running.
#
# Which engine: the one `docker info` already reaches (DOCKER_HOST, or the default socket) is
# used as it is. Otherwise the script starts `dockerd` (Debian: apt-get install docker.io; needs
# root) with everything under FUSION_DOCKER_HOME (default ~/.cache/fusion-engine/docker): its own
# socket (docker.sock), data root (root/, kept between runs so base images and build layers stay
# cached on the machine), exec root, pid file and log (dockerd.log). FUSION_DOCKERD_ARGS adds
# dockerd arguments. Beware: a dockerd started with --bridge=none deletes the docker0 bridge that
# another daemon on the machine may be using.
set -euo pipefail

ENGINE_HOME=${FUSION_DOCKER_HOME:-${HOME:-/root}/.cache/fusion-engine/docker}
SOCKET="$ENGINE_HOME/docker.sock"
PIDFILE="$ENGINE_HOME/dockerd.pid"
LOG="$ENGINE_HOME/dockerd.log"
OWN_HOST="unix://$SOCKET"
START_TIMEOUT_S=${FUSION_DOCKER_START_TIMEOUT_S:-60}

say() { echo "docker-engine: $*" >&2; }

reachable() {  # reachable [DOCKER_HOST]: does `docker info` answer there (the current one if none)?
  command -v docker >/dev/null 2>&1 || return 1
  if [ $# -gt 0 ]; then
    DOCKER_HOST=$1 timeout 20 docker info >/dev/null 2>&1
  else
    timeout 20 docker info >/dev/null 2>&1
  fi
}

own_pid() {  # the pid of the dockerd this script started, if it still runs
  [ -s "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  # The pid file must still name our dockerd (not a recycled pid, not someone else's daemon).
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "dockerd --host $OWN_HOST " || return 1
  echo "$pid"
}

start_own() {  # start our dockerd; 0 when it answers
  command -v dockerd >/dev/null 2>&1 || { say "no Docker engine reachable and no dockerd (Debian: apt-get install docker.io)"; return 1; }
  [ "$(id -u)" = 0 ] || { say "no Docker engine reachable, and starting dockerd needs root"; return 1; }
  mkdir -p "$ENGINE_HOME/root" "$ENGINE_HOME/exec"
  say "starting dockerd: socket $SOCKET, data root $ENGINE_HOME/root (log $LOG)"
  # setsid: the daemon is not in the caller's process group (Ctrl-C in make does not kill it
  # half-way); `stop` ends it by its pid.
  setsid dockerd --host "$OWN_HOST" --data-root "$ENGINE_HOME/root" \
    --exec-root "$ENGINE_HOME/exec" --pidfile "$PIDFILE" ${FUSION_DOCKERD_ARGS:-} >>"$LOG" 2>&1 </dev/null &
  local waited=0
  until reachable "$OWN_HOST"; do
    if ! kill -0 $! 2>/dev/null; then
      say "dockerd exited; last lines of $LOG:"; tail -n 20 "$LOG" >&2; return 1
    fi
    if [ "$waited" -ge "$START_TIMEOUT_S" ]; then
      say "dockerd did not answer within ${START_TIMEOUT_S}s; see $LOG"; stop_own; return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  say "dockerd is up after ${waited}s (pid $(cat "$PIDFILE"))"
}

stop_own() {  # stop our dockerd, if it runs; never another daemon
  local pid
  pid=$(own_pid) || { say "no dockerd started by this script is running"; return 0; }
  say "stopping dockerd pid $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }; sleep 0.5; done
  say "dockerd pid $pid still runs after 30s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

# ensure: sets ENGINE (the DOCKER_HOST to use, "" for the default socket) and STARTED (1 when
# this call started the daemon, which the caller then stops).
ensure() {
  STARTED=0
  if reachable; then ENGINE=${DOCKER_HOST:-}; return 0; fi
  if reachable "$OWN_HOST"; then ENGINE=$OWN_HOST; return 0; fi
  mkdir -p "$ENGINE_HOME"
  exec 9>"$ENGINE_HOME/lock"
  flock 9  # two callers at once must not start two daemons on one data root
  if reachable "$OWN_HOST"; then ENGINE=$OWN_HOST; exec 9>&-; return 0; fi
  start_own || { exec 9>&-; return 1; }
  exec 9>&-
  ENGINE=$OWN_HOST
  STARTED=1
}

case ${1:-} in
  run)
    shift
    optional=0
    if [ "${1:-}" = --optional ]; then optional=1; shift; fi
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || { say "usage: $0 run [--optional] -- CMD [ARG...]"; exit 2; }
    if ! ensure; then
      [ "$optional" = 1 ] || exit 1
      say "going on without a Docker engine (--optional)"
      exec "$@"
    fi
    [ -n "$ENGINE" ] && export DOCKER_HOST=$ENGINE
    if [ "$STARTED" = 1 ]; then
      status=0
      trap 'stop_own' EXIT
      trap 'exit 130' INT TERM
      "$@" || status=$?
      exit "$status"
    fi
    exec "$@"
    ;;
  start)
    ensure
    if [ -n "$ENGINE" ]; then echo "export DOCKER_HOST=$ENGINE"; fi
    if [ "$STARTED" = 1 ] || own_pid >/dev/null; then
      say "this script's dockerd runs; stop it with: $0 stop"
    else
      say "using the engine that was already running (${ENGINE:-default socket}); $0 stop leaves it alone"
    fi
    ;;
  stop)
    stop_own
    ;;
  status)
    if reachable; then echo "reachable: ${DOCKER_HOST:-default socket}"; fi
    if pid=$(own_pid); then echo "own dockerd: pid $pid, $OWN_HOST"; else echo "own dockerd: not running"; fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
