#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379: use the running one, else start redis-server.
# Without redis-server the Redis suites skip (with CI=true that is an error).
set -euo pipefail
port=${REDIS_PORT:-6379}

answers() {
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG
  else
    # No redis-cli: speak the protocol with bash's /dev/tcp.
    exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3>&-
    [[ "$reply" == +PONG* ]]
  fi
}

if answers; then
  echo "redis: answering on 127.0.0.1:$port"
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: no server on 127.0.0.1:$port and redis-server is not installed; Redis tests will skip" >&2
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile /tmp/fusion-redis.log
for _ in $(seq 1 50); do
  answers && { echo "redis: started on 127.0.0.1:$port"; exit 0; }
  sleep 0.1
done
echo "redis: redis-server did not come up (see /tmp/fusion-redis.log)" >&2
exit 1
