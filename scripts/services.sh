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
MOTO_PORT=${MOTO_PORT:-4566}          # one moto server serves SQS and DynamoDB
MOTO_VERSION=${MOTO_VERSION:-5.2.1}
RABBIT_NODE=${RABBIT_NODE:-rabbit@$(hostname -s)}
MONGO_PORT=${MONGO_PORT:-27017}
MEMCACHED_PORT=${MEMCACHED_PORT:-11211}
SECANTUS_VERSION=${SECANTUS_VERSION:-0.7.0b3}
PUBSUB_PORT=${PUBSUB_PORT:-8085}
# Google's Pub/Sub emulator (Debian package google-cloud-cli-pubsub-emulator, Java).
PUBSUB_EMULATOR=${PUBSUB_EMULATOR:-/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator}
PUBSUB_PROJECT=${PUBSUB_PROJECT:-machinery-test}
PY=${PY:-python3}

mkdir -p "$SVC_DIR"
SVC_DIR=$(cd "$SVC_DIR" && pwd)
log() { printf '[services] %s\n' "$*" >&2; }

redis_ok() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT; printf 'PING\r\n' >&3; IFS= read -r -t 1 l <&3; [[ \$l == +PONG* ]]" 2>/dev/null; }
mongo_ok() { timeout 5 "$PY" -c "import pymongo; pymongo.MongoClient('127.0.0.1', $MONGO_PORT, directConnection=True, serverSelectionTimeoutMS=1000).admin.command('ping')" >/dev/null 2>&1; }
moto_ok()  { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MOTO_PORT; printf 'GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3; IFS= read -r -t 2 l <&3; [[ \$l == HTTP/*' 200'* ]]" 2>/dev/null; }
mc_ok()    { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf 'version\r\n' >&3; IFS= read -r -t 1 l <&3; [[ \$l == VERSION* ]]" 2>/dev/null; }
memcached_ok() { mc_ok "$MEMCACHED_PORT"; }
pubsub_ok() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PUBSUB_PORT; printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3; grep -q '^Ok' <&3" 2>/dev/null; }
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
  # The cluster tests need redis-cli (--cluster create); the Sentinel tests run
  # `redis-server --sentinel`, so no separate redis-sentinel binary is needed.
  command -v redis-cli >/dev/null || apt+=(redis-tools)
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt+=(rabbitmq-server)
  command -v openssl >/dev/null || apt+=(openssl)
  command -v memcached >/dev/null || [ -x /usr/bin/memcached ] || apt+=(memcached)
  if ((${#apt[@]})); then
    log "apt-get install ${apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
  fi
  # SecantusDB: MongoDB's wire protocol over WiredTiger (no real mongod can be had here).
  if [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("SecantusDB"))' 2>/dev/null)" != "$SECANTUS_VERSION" ]; then
    log "pip install SecantusDB==$SECANTUS_VERSION"
    "$PY" -m pip install -q --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
  fi
  # moto (SQS + DynamoDB emulator), pinned.
  if [ "$("$PY" -c 'import importlib.metadata as m, flask_cors; print(m.version("moto"))' 2>/dev/null)" != "$MOTO_VERSION" ]; then
    log "pip install moto[server]==$MOTO_VERSION"
    "$PY" -m pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" 2>/dev/null \
      || "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "moto[server]==$MOTO_VERSION"
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

port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
launch_mongo() {
  # Port 27017 unless a port was chosen before or 27017 holds something that is not MongoDB.
  [ -s "$SVC_DIR/mongo.port" ] && MONGO_PORT=$(cat "$SVC_DIR/mongo.port")
  mongo_ok && { log "mongo-compatible server already up on $MONGO_PORT"; echo "$MONGO_PORT" >"$SVC_DIR/mongo.port"; return; }
  if ! port_free "$MONGO_PORT"; then
    MONGO_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  echo "$MONGO_PORT" >"$SVC_DIR/mongo.port"
  nohup "$PY" -m secantus --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: --cache-size 256M \
    >"$SVC_DIR/mongo.log" 2>&1 &
  echo $! >"$SVC_DIR/mongo.pid"
}

launch_moto() {
  moto_ok && { log "moto already up on $MOTO_PORT"; return; }
  # moto's server, with DynamoDB writes atomic as on the real service (see the script).
  nohup "$PY" "$(dirname "$0")/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT" >"$SVC_DIR/moto.log" 2>&1 &
  echo $! >"$SVC_DIR/moto.pid"
}

# memcached: the one this script started before (its port is kept in memcached.port), else
# one already answering on MEMCACHED_PORT, else a new one there, or on the next free port.
launch_memcached() {
  local saved
  saved=$(cat "$SVC_DIR/memcached.port" 2>/dev/null || true)
  if [ -n "$saved" ] && mc_ok "$saved"; then MEMCACHED_PORT=$saved; log "memcached already up on $saved"; return; fi
  memcached_ok && { log "memcached already up on $MEMCACHED_PORT"; return; }
  while ! port_free "$MEMCACHED_PORT"; do MEMCACHED_PORT=$((MEMCACHED_PORT + 1)); done
  local user=memcache
  id -u memcache >/dev/null 2>&1 || user=nobody
  nohup memcached -u "$user" -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64 >"$SVC_DIR/memcached.log" 2>&1 &
  echo $! >"$SVC_DIR/memcached.pid"
  echo "$MEMCACHED_PORT" >"$SVC_DIR/memcached.port"
}

# The Pub/Sub emulator keeps everything in memory; the tests create their topics and
# subscriptions. Without the package (it cannot be installed from the registries here) the
# Pub/Sub tests fail under MACHINERY_REQUIRE_SERVICES=1 instead of skipping.
launch_pubsub() {
  pubsub_ok && { log "pubsub emulator already up on $PUBSUB_PORT"; return; }
  if [ ! -x "$PUBSUB_EMULATOR" ]; then
    log "pubsub emulator not installed ($PUBSUB_EMULATOR): MACHINERY_TEST_PUBSUB_URL stays unset"
    PUBSUB_MISSING=1
    return
  fi
  CLOUD_PUBSUB_EMULATOR_OPTS=${CLOUD_PUBSUB_EMULATOR_OPTS:--Xmx512m} \
    nohup "$PUBSUB_EMULATOR" --host=127.0.0.1 --port="$PUBSUB_PORT" >"$SVC_DIR/pubsub.log" 2>&1 &
  echo $! >"$SVC_DIR/pubsub.pid"
}

write_env() {
  cat >"$SVC_DIR/env.sh" <<ENV
export MACHINERY_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
export MACHINERY_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f
export MACHINERY_TEST_MONGODB_URL=mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true
export MACHINERY_TEST_MEMCACHE_URL=memcache://127.0.0.1:$MEMCACHED_PORT
# moto: any key works; one endpoint for SQS and DynamoDB.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT
export MACHINERY_TEST_DYNAMODB_URL=dynamodb+http://test:test@127.0.0.1:$MOTO_PORT?region=us-east-1
export MACHINERY_TEST_SQS_URL=http://127.0.0.1:$MOTO_PORT/123456789012
ENV
  if [ -z "${PUBSUB_MISSING:-}" ]; then
    cat >>"$SVC_DIR/env.sh" <<ENV
# Google's Pub/Sub emulator: the broker reads PUBSUB_EMULATOR_HOST (anonymous credentials).
export PUBSUB_EMULATOR_HOST=127.0.0.1:$PUBSUB_PORT
export MACHINERY_TEST_PUBSUB_URL=gcppubsub://$PUBSUB_PROJECT/machinery_tasks
ENV
  fi
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
  rm -f "$SVC_DIR/mongo.port" "$SVC_DIR/memcached.port"
}

case "${1:-start}" in
  start)
    install_packages
    launch_rabbitmq
    launch_redis
    launch_mongo
    launch_moto
    launch_memcached
    launch_pubsub
    wait_for redis 30 redis_ok
    wait_for mongo 60 mongo_ok
    wait_for moto 60 moto_ok
    wait_for memcached 30 memcached_ok
    wait_for rabbitmq 120 amqp_ok
    [ -n "${PUBSUB_MISSING:-}" ] || wait_for pubsub 60 pubsub_ok
    write_env ;;
  stop) stop_all ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
