#!/usr/bin/env bash
# A real local cluster in the background: ZooKeeper, Redis, two routes, two
# chat servers. Everything (logs, pids, data, secrets) lives in .cluster/.
#   scripts/cluster.sh up | down | status
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${CIM_CLUSTER_DIR:-.cluster}
ZK_PORT=${ZK_PORT:-12181}
REDIS_PORT=${REDIS_PORT:-16379}
ROUTE_PORTS=(${ROUTE_PORTS:-7100 7101})
SERVER_PORTS=(${SERVER_PORTS:-7201 7202})
# Each process serves Prometheus metrics on its port + this (7100 -> 9100).
METRICS_OFFSET=${METRICS_OFFSET:-2000}
CIM=.venv/bin/cim
ZK_CP=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-nop.jar

wait_port() {  # host port seconds what
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "cluster: $4 did not start; see $DIR/*.log" >&2; exit 1; fi
    sleep 0.2
  done
}

start() {  # name command...
  local name=$1; shift
  nohup "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

up() {
  if [ -f "$DIR/zookeeper.pid" ] && kill -0 "$(cat "$DIR/zookeeper.pid")" 2>/dev/null; then
    echo "cluster: already running (make cluster-down first)"; exit 1
  fi
  mkdir -p "$DIR/zk-data" "$DIR/redis-data"
  if [ ! -f "$DIR/env" ]; then
    printf 'export CIM_CLUSTER_SECRET=%s\nexport CIM_TOKEN_KEYS=k1:%s\n' \
      "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
      "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$DIR/env"
    chmod 600 "$DIR/env"
  fi
  # shellcheck disable=SC1091
  . "$DIR/env"
  start zookeeper java -cp "$ZK_CP" -Dzookeeper.admin.enableServer=false \
    org.apache.zookeeper.server.ZooKeeperServerMain "$ZK_PORT" "$DIR/zk-data"
  start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis-data" \
    --appendonly yes --appendfsync always --save ""
  wait_port 127.0.0.1 "$ZK_PORT" 30 ZooKeeper
  wait_port 127.0.0.1 "$REDIS_PORT" 10 Redis
  local zk=127.0.0.1:$ZK_PORT
  for port in "${ROUTE_PORTS[@]}"; do
    start "route-$port" "$CIM" route --port "$port" --zk "$zk" --redis "redis://127.0.0.1:$REDIS_PORT/0" \
      --metrics-port $((port + METRICS_OFFSET))
  done
  for port in "${SERVER_PORTS[@]}"; do
    start "server-$port" "$CIM" server --port "$port" --zk "$zk" --metrics-port $((port + METRICS_OFFSET))
  done
  for port in "${ROUTE_PORTS[@]}" "${SERVER_PORTS[@]}"; do wait_port 127.0.0.1 "$port" 30 "cim on $port"; done
  local routes
  routes=$(printf '127.0.0.1:%s,' "${ROUTE_PORTS[@]}")
  echo "cluster up: ZooKeeper 127.0.0.1:$ZK_PORT, Redis 127.0.0.1:$REDIS_PORT,"
  echo "  routes ${ROUTE_PORTS[*]}, chat servers ${SERVER_PORTS[*]}; logs and pids in $DIR/"
  echo "  metrics: http://127.0.0.1:PORT/metrics on each port + $METRICS_OFFSET"
  echo "connect: make client NAME=alice ROUTE=${routes%,}"
}

down() {
  # Chat servers first (they drain), then routes, then Redis and ZooKeeper.
  for name in $(ls "$DIR" 2>/dev/null | grep -E '^server-.*\.pid$') \
              $(ls "$DIR" 2>/dev/null | grep -E '^route-.*\.pid$') redis.pid zookeeper.pid; do
    [ -f "$DIR/$name" ] || continue
    pid=$(cat "$DIR/$name")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name"
  done
  echo "cluster down (data and logs kept in $DIR/)"
}

status() {
  for pidfile in "$DIR"/*.pid; do
    [ -f "$pidfile" ] || { echo "cluster: not running"; return; }
    name=$(basename "$pidfile" .pid)
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "$name: running"; else echo "$name: dead"; fi
  done
  echo
  # What the cluster itself says: members, health, store; exits 1 when unhealthy.
  "$CIM" status --zk "127.0.0.1:$ZK_PORT" --redis "redis://127.0.0.1:$REDIS_PORT/0" --zk-connect-timeout 5
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
