#!/usr/bin/env bash
# services.sh — install (if missing) and start, on 127.0.0.1 only, the servers the driver
# tests talk to, and wait for each with a bounded loop. Idempotent: a service whose readiness
# probe already passes is left alone (on rust-svc machines Redis 6379 and RabbitMQ 5672 are
# already running). Writes $SVC_DIR/env.sh with the test variables.
#   bash scripts/services.sh start
#   bash scripts/services.sh stop     # stops only what this script started (by PID)
#   . .services/env.sh
set -euo pipefail

SVC_DIR=${SVC_DIR:-.services}
REDIS_PORT=${REDIS_PORT:-6379}
AMQP_PORT=${AMQP_PORT:-5672}
RABBIT_NODE=${RABBIT_NODE:-rabbit@$(hostname -s)}

mkdir -p "$SVC_DIR"
SVC_DIR=$(cd "$SVC_DIR" && pwd)
log() { printf '[services] %s\n' "$*" >&2; }

redis_ok() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT; printf 'PING\r\n' >&3; IFS= read -r -t 1 l <&3; [[ \$l == +PONG* ]]" 2>/dev/null; }
amqp_ok()  { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$AMQP_PORT; printf 'AMQP\x00\x00\x09\x01' >&3; head -c1 <&3 | od -An -tx1 | grep -q 01" 2>/dev/null; }

wait_for() {
  local name=$1 limit=$2 probe=$3 t0=$SECONDS
  until $probe; do
    if (( SECONDS - t0 >= limit )); then
      log "$name NOT ready after ${limit}s; last log lines:"
      tail -n 30 "$SVC_DIR/$name.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
  log "$name ready on 127.0.0.1 (waited $((SECONDS - t0))s)"
}

install_packages() {
  local apt=()
  # The restart / TLS tests start their own servers, so the binaries must exist even when
  # the machine's services are already running.
  command -v redis-server >/dev/null || apt+=(redis-server)
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt+=(rabbitmq-server)
  command -v openssl >/dev/null || apt+=(openssl)
  if ((${#apt[@]})); then
    log "apt-get install ${apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
  fi
}

launch_redis() {
  redis_ok && { log "redis already up on $REDIS_PORT"; return; }
  nohup redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$SVC_DIR" \
    >"$SVC_DIR/redis.log" 2>&1 &
  echo $! >"$SVC_DIR/redis.pid"
}

launch_rabbitmq() {
  amqp_ok && { log "rabbitmq already up on $AMQP_PORT"; return; }
  RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT" \
  ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    rabbitmq-server -detached >"$SVC_DIR/rabbitmq.log" 2>&1
  echo "rabbitmqctl:$RABBIT_NODE" >"$SVC_DIR/rabbitmq.pid"
}

write_env() {
  cat >"$SVC_DIR/env.sh" <<ENV
export MACHINERY_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
export MACHINERY_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f
ENV
  log "wrote $SVC_DIR/env.sh"
}

alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat"; }
stop_all() {
  local f pid
  for f in "$SVC_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if [[ $pid == rabbitmqctl:* ]]; then
      rabbitmqctl -n "${pid#rabbitmqctl:}" stop >/dev/null 2>&1 || true
    elif alive "$pid"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

case "${1:-start}" in
  start)
    install_packages
    launch_rabbitmq
    launch_redis
    wait_for redis 30 redis_ok
    wait_for rabbitmq 120 amqp_ok
    write_env ;;
  stop) stop_all ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
