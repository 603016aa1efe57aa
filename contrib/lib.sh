# Shared by the demo and the benchmarks: a temp folder, free ports, and real etcd, PostgreSQL and harp-proxy
# processes on loopback, all stopped on exit. Source it; it sets $work, $bin and the *_port vars.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source contrib/install-deps.sh
pgbin=/usr/lib/postgresql/15/bin

# HARP_BUILD=debug reuses the debug build (contrib/test.sh runs the demo so); benchmarks want release.
build=${HARP_BUILD:-release}
echo "== building harp-proxy ($build)" >&2
swift build -c "$build" --product harp-proxy >/dev/null
swift build -c "$build" --product harpctl >/dev/null
bin=$(swift build -c "$build" --show-bin-path)

work=$(mktemp -d /tmp/harp-XXXXXX)
chmod 755 "$work"
pids=()
datadirs=()
cleanup() {
  # HARP_KEEP_LOG=FILE keeps harp-proxy's log; HARP_LOG_LEVEL sets its level (default warning).
  if [ -n "${HARP_KEEP_LOG:-}" ] && [ -f "$work/harp-proxy.log" ]; then cp "$work/harp-proxy.log" "$HARP_KEEP_LOG"; fi
  # PostgreSQL first, with pg_ctl: the pid we hold may be a subshell or runuser, not the postmaster.
  for dir in "${datadirs[@]}"; do as_postgres "$pgbin/pg_ctl" -D "$dir" -m immediate -w -t 10 stop >/dev/null 2>&1 || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  # Anything a benchmark started again itself (a restarted Patroni) names the work folder.
  pkill -9 -f "$work/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { local p; for p in $(seq "$1" $(( $1 + 500 ))); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }; done; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# start_postgres NAME PORT: a fresh cluster with trust auth on 127.0.0.1:PORT.
start_postgres() {
  local dir="$work/$1"
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  as_postgres "$pgbin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
  datadirs+=("$dir/data")
  as_postgres "$pgbin/postgres" -D "$dir/data" -p "$2" -k "$dir" -c listen_addresses=127.0.0.1 -c fsync=off \
      -c synchronous_commit=off -c max_connections=200 >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$2" && return; sleep 0.1; done
  echo "PostgreSQL $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}

start_etcd() {
  local peer; peer=$(free_port $(( etcd_port + 1 )))
  etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
       --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
       --initial-cluster "default=http://127.0.0.1:$peer" --logger zap --log-level error >"$work/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" endpoint health >/dev/null 2>&1 && return; sleep 0.1; done
  echo "etcd did not start" >&2; exit 1
}

etcdput() { ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" put "$@" >/dev/null; }

# add_instance NAME LOCATION PORT [DIRECTIVE: VALUE ...]: one builtin instance in conf.d.
add_instance() {
  mkdir -p "$work/conf.d"
  printf 'proxy:\n  name: %s\n  location: %s\n  listen_address: 127.0.0.1\n  listen_port: %s\n  max_client_conn: 1000\n' "$1" "$2" "$3" >"$work/conf.d/$1.yml"
  local extra; for extra in "${@:4}"; do printf '  %s\n' "$extra" >>"$work/conf.d/$1.yml"; done
}

# run_harp_proxy CLUSTER [LOG_LEVEL]: harp-proxy with config.yml and every instance added.
run_harp_proxy() {
  printf 'cluster: {name: %s}\ndcs: {driver: etcd, endpoints: [127.0.0.1:%s]}\ncontrol: {socket: %s/control.sock}\nlog_level: %s\n' \
    "$1" "$etcd_port" "$work" "${2:-${HARP_LOG_LEVEL:-warning}}" >"$work/config.yml"
  "$bin/harp-proxy" -f "$work/config.yml" >"$work/harp-proxy.log" 2>&1 &
  harp_pid=$!
  pids+=($harp_pid)
}

# start_harp_proxy PORT LOCATION: one builtin instance following LOCATION (cluster "bench").
start_harp_proxy() {
  add_instance bench "$2" "$1"
  run_harp_proxy bench
}

# two_node_location: PostgreSQL node1 ($a_port) and node2 ($b_port) in location dc1 of cluster
# "bench", node1 leading, etcd, and harp-proxy on $harp_port following dc1, ready for clients.
two_node_location() {
  a_port=$(free_port 25432)
  b_port=$(free_port $(( a_port + 1 )))
  start_postgres node1 "$a_port"
  start_postgres node2 "$b_port"
  start_etcd
  harp_port=$(free_port 26432)
  etcdput /harp/bench/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$a_port dbname=postgres\"}"
  etcdput /harp/bench/nodes/node2 "{\"name\":\"node2\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$b_port dbname=postgres\"}"
  etcdput /harp/bench/locations/dc1/leader '{"name":"node1"}'
  start_harp_proxy "$harp_port" dc1
  for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$harp_port" && return; sleep 0.1; done
}

etcd_port=$(free_port 24790)

# patroni_member NAME PG_PORT API_PORT: a Patroni member of scope dc1 (its folder, config and
# process), as the test fixture writes it; start_etcd first.
patroni_member() {
  local dir="$work/$1"
  mkdir -p "$dir/sock"
  cat >"$dir/patroni.yml" <<YAML
scope: dc1
namespace: /service
name: $1
restapi: {listen: 127.0.0.1:$3, connect_address: 127.0.0.1:$3}
etcd3: {hosts: 127.0.0.1:$etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters: {wal_retrieve_retry_interval: 500ms, fsync: 'off'}
  initdb: [{encoding: UTF8}, no-sync]
postgresql:
  listen: 127.0.0.1:$2
  connect_address: 127.0.0.1:$2
  data_dir: $dir/data
  bin_dir: $pgbin
  pgpass: $dir/pgpass
  use_pg_rewind: true
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: postgres, password: postgres}
    rewind: {username: postgres, password: postgres}
  parameters: {unix_socket_directories: $dir/sock, fsync: 'off', max_connections: 200}
  pg_hba: [local all all trust, host all all 127.0.0.1/32 trust, host replication all 127.0.0.1/32 trust]
  basebackup: [{checkpoint: fast}]
watchdog: {mode: 'off'}
YAML
  [ "$(id -u)" -eq 0 ] && chown -R postgres: "$dir"
  datadirs+=("$dir/data")
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups --reset-env /usr/bin/patroni "$dir/patroni.yml" >"$work/$1.log" 2>&1 &
  else
    patroni "$dir/patroni.yml" >"$work/$1.log" 2>&1 &
  fi
  pids+=($!)
}

# patroni_haproxy CHECK PORT_TEMPLATE PORT_FAST SERVERS: HAProxy in front of Patroni members, as
# Patroni's template has it (CHECK: "GET /primary" or "OPTIONS /replica", round robin; `inter 3s
# fall 3 rise 2`, shutdown-sessions) on PORT_TEMPLATE, and with 1 s checks (`fall 1 rise 1`) on
# PORT_FAST. SERVERS: "NAME PG_PORT API_PORT" lines. Started in the background, stopped on exit.
patroni_haproxy() {
  local servers="" name pg api
  while read -r name pg api; do
    [ -n "$name" ] && servers+="  server $name 127.0.0.1:$pg maxconn 500 check port $api"$'\n'
  done <<<"$4"
  {
    printf 'global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n'
    for listen in "template $2 inter 3s fall 3 rise 2" "fast $3 inter 1s fall 1 rise 1"; do
      set -- "$1" $listen
      printf 'listen %s\n  bind 127.0.0.1:%s\n  balance roundrobin\n  option httpchk %s\n  http-check expect status 200\n' "$2" "$3" "$1"
      printf '  default-server %s %s %s %s %s %s on-marked-down shutdown-sessions\n%s' "$4" "$5" "$6" "$7" "$8" "$9" "$servers"
    done
  } >"$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  pids+=($!)
}
