#!/usr/bin/env bash
# redis-cluster.sh — a private local Redis Cluster (3 masters, no replicas) for benchmarks and
# manual runs, on 127.0.0.1 ports $BASE, $BASE+1, $BASE+2 (bus ports +10000), in $DIR.
# The tests start their own clusters on OS-given ports; this one is left running until stop.
#   bash scripts/redis-cluster.sh start     # prints the cluster URL
#   ./target/release/machinery bench e2e --broker "$(bash scripts/redis-cluster.sh url)" \
#       --backend "$(bash scripts/redis-cluster.sh url)"
#   bash scripts/redis-cluster.sh stop      # stops only the servers it started (by PID)
set -euo pipefail

BASE=${REDIS_CLUSTER_PORT:-7100}
DIR=${REDIS_CLUSTER_DIR:-.services/redis-cluster}
PORTS=("$BASE" "$((BASE + 1))" "$((BASE + 2))")
url() {
  local nodes=()
  for p in "${PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
  local IFS=,
  echo "redis://${nodes[*]}"
}

case ${1:-} in
  start)
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
      || { echo "redis-server and redis-cli must be installed (bash scripts/services.sh start)" >&2; exit 1; }
    mkdir -p "$DIR"
    for p in "${PORTS[@]}"; do
      if redis-cli -p "$p" ping >/dev/null 2>&1; then
        echo "port $p is already in use; set REDIS_CLUSTER_PORT" >&2; exit 1
      fi
      rm -f "$DIR/nodes-$p.conf"
      redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$p.conf" --save "" --appendonly no --dir "$DIR" \
        >"$DIR/redis-$p.log" 2>&1 &
      echo $! >"$DIR/redis-$p.pid"
    done
    for p in "${PORTS[@]}"; do
      for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    nodes=()
    for p in "${PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    for p in "${PORTS[@]}"; do
      for _ in $(seq 300); do
        redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break
        sleep 0.1
      done
    done
    url
    ;;
  url) url ;;
  stop)
    for p in "${PORTS[@]}"; do
      f="$DIR/redis-$p.pid"
      [[ -f $f ]] && { kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; }
    done
    ;;
  *) echo "usage: $0 start|url|stop" >&2; exit 2 ;;
esac
