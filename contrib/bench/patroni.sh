#!/usr/bin/env bash
# Following a Patroni switchover: harp-proxy (leader_source: patroni) against HAProxy with
# Patroni's REST checks (option httpchk GET /primary, on-marked-down shutdown-sessions), with
# Patroni's template timing (inter 3s fall 3 rise 2) and an aggressive one (inter 1s fall 1
# rise 1), side by side in one run. Real etcd, two PostgreSQL 15 members under Debian's Patroni.
# Times run from the later of: the leader key naming the new member (an etcd watcher sees it),
# and that member accepting writes; to the first new client it serves through each proxy.
#   contrib/bench/patroni.sh [SWITCHOVERS]      (default 20)
#   contrib/bench/patroni.sh crash [N]          N crashes of the leader's postmaster (default 10):
#                                               writes that fail as read-only (patroni_node.py)
#   contrib/bench/patroni.sh restart [N]        N pause/restart/resume cycles of the leader's Patroni,
#                                               then N kill -9 restarts: sessions cut, clients refused
# harp-proxy asks the new leader itself whether it is out of recovery (dcs.patroni_check_dsn, as
# Patroni's superuser here); PATRONI_CHECK=api leaves that out, so that only Patroni's REST API is asked.
source "$(dirname "$0")/../lib.sh"
scenario=switchover
case "${1:-}" in crash|restart) scenario=$1; shift ;; esac
switchovers=${1:-20}
[ "$scenario" = switchover ] || switchovers=${1:-10}
command -v haproxy >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq haproxy >/dev/null; }
command -v patroni >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq patroni >/dev/null; }
python=/usr/bin/python3   # Debian's, beside patroni's own modules
start_etcd

pg1=$(free_port 25432); pg2=$(free_port $(( pg1 + 1 ))); api1=$(free_port 28008); api2=$(free_port $(( api1 + 1 )))
patroni_member pg1 "$pg1" "$api1"
for _ in $(seq 300); do [ "$("$pgbin/psql" -h 127.0.0.1 -p "$pg1" -U postgres -Atc 'select pg_is_in_recovery()' 2>/dev/null)" = f ] && break; sleep 0.2; done
patroni_member pg2 "$pg2" "$api2"
for _ in $(seq 300); do [ "$("$pgbin/psql" -h 127.0.0.1 -p "$pg2" -U postgres -Atc 'select status from pg_stat_wal_receiver' 2>/dev/null)" = streaming ] && break; sleep 0.2; done
echo "== Patroni: pg1 on $pg1 leading, pg2 on $pg2 streaming" >&2

harp_port=$(free_port 26432)
check=", patroni_check_dsn: 'user=postgres dbname=postgres'"
[ "${PATRONI_CHECK:-dsn}" = api ] && check=""
cat >"$work/config.yml" <<YAML
cluster: {name: bench}
dcs: {driver: etcd, endpoints: [127.0.0.1:$etcd_port], leader_source: patroni$check}
control: {socket: $work/control.sock}
log_level: ${HARP_LOG_LEVEL:-warning}
proxy: {name: bench, location: dc1, listen_address: 127.0.0.1, listen_port: $harp_port, max_client_conn: 1000, hold_timeout: 30s}
YAML
"$bin/harp-proxy" -f "$work/config.yml" >"$work/harp-proxy.log" 2>&1 &
harp_pid=$!
pids+=($harp_pid)

if [ "$scenario" != switchover ]; then
  for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$harp_port" && break; sleep 0.1; done
  echo "== $scenario x $switchovers, $(nproc) cores, harp-proxy ${PATRONI_CHECK:-dsn}"
  "$python" contrib/bench/patroni_node.py "$scenario" "$switchovers" "$etcd_port" /service dc1 \
    "pg1=$work/pg1:$pg1,pg2=$work/pg2:$pg2" "$harp_port"
  exit 0
fi

template=$(free_port $(( harp_port + 1 ))); fast=$(free_port $(( template + 1 )))
patroni_haproxy "GET /primary" "$template" "$fast" "pg1 $pg1 $api1
pg2 $pg2 $api2"
for port in $harp_port $template $fast; do
  for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
done
sleep 7   # HAProxy's template timing needs two good checks before it sends anyone to pg1

echo "== $switchovers switchovers (patronictl switchover --force), $(nproc) cores, haproxy $(haproxy -v | awk 'NR==1 {print $3}')"
"$python" contrib/bench/patroni.py "$etcd_port" /service dc1 "$work/pg1/patroni.yml" "pg1:$pg1,pg2:$pg2" "$switchovers" \
  "harp-proxy=$harp_port" "haproxy-3s=$template" "haproxy-1s=$fast"
