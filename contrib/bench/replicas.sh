#!/usr/bin/env bash
# Read-only instances: harp-proxy's replica instance (route_to: replica, leader_source: patroni)
# against HAProxy's `listen replicas` from Patroni's template (option httpchk OPTIONS /replica,
# balance roundrobin, inter 3s fall 3 rise 2) and an aggressive one (inter 1s fall 1 rise 1), side
# by side, in front of three Patroni members (pg1 leads, pg2 and pg3 replicate). Real etcd,
# PostgreSQL 15 and Debian's Patroni. What replicas.py measures, in order:
#   spread     pgbench -S -C through each port: tps, and each member's share of the sessions
#   crash      pg3's postmaster killed -9: clients refused, and until the last one is sent to pg3
#   rejoin     pg3 streaming again (Patroni restarts it): until its first client through each port
#   lag        pg2's replay paused while the leader writes: until the last client sent to pg2
#   switchover pg1 -> pg2: clients of the replica port that land on pg2 once the key names it
#   contrib/bench/replicas.sh
source "$(dirname "$0")/../lib.sh"
command -v haproxy >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq haproxy >/dev/null; }
command -v patroni >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq patroni >/dev/null; }
python=/usr/bin/python3
start_etcd

pg1=$(free_port 25432); pg2=$(free_port $(( pg1 + 1 ))); pg3=$(free_port $(( pg2 + 1 )))
api1=$(free_port 28008); api2=$(free_port $(( api1 + 1 ))); api3=$(free_port $(( api2 + 1 )))
patroni_member pg1 "$pg1" "$api1"
for _ in $(seq 300); do [ "$("$pgbin/psql" -h 127.0.0.1 -p "$pg1" -U postgres -Atc 'select pg_is_in_recovery()' 2>/dev/null)" = f ] && break; sleep 0.2; done
for m in "pg2 $pg2 $api2" "pg3 $pg3 $api3"; do
  set -- $m
  patroni_member "$1" "$2" "$3"
  for _ in $(seq 300); do [ "$("$pgbin/psql" -h 127.0.0.1 -p "$2" -U postgres -Atc 'select status from pg_stat_wal_receiver' 2>/dev/null)" = streaming ] && break; sleep 0.2; done
done
echo "== Patroni: pg1 on $pg1 leading, pg2 on $pg2 and pg3 on $pg3 streaming" >&2

harp_port=$(free_port 26432)
cat >"$work/config.yml" <<YAML
cluster: {name: bench}
dcs: {driver: etcd, endpoints: [127.0.0.1:$etcd_port], leader_source: patroni}
control: {socket: $work/control.sock}
log_level: ${HARP_LOG_LEVEL:-warning}
proxy: {name: replicas, location: dc1, listen_address: 127.0.0.1, listen_port: $harp_port, max_client_conn: 1000,
        hold_timeout: 30s, route_to: replica, max_replica_lag: 1MB}
YAML
"$bin/harp-proxy" -f "$work/config.yml" >"$work/harp-proxy.log" 2>&1 &
harp_pid=$!
pids+=($harp_pid)

template=$(free_port $(( harp_port + 1 ))); fast=$(free_port $(( template + 1 )))
patroni_haproxy "OPTIONS /replica" "$template" "$fast" "pg1 $pg1 $api1
pg2 $pg2 $api2
pg3 $pg3 $api3"
for port in $harp_port $template $fast; do
  for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
done
sleep 7   # HAProxy's template timing needs two good checks before it sends anyone to a replica
"$pgbin/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$pg1" -U postgres postgres >/dev/null 2>&1

echo "== replica instances: harp-proxy vs HAProxy (Patroni's template and 1s checks), $(nproc) cores, haproxy $(haproxy -v | awk 'NR==1 {print $3}')"
"$python" contrib/bench/replicas.py "$etcd_port" "$work/pg1/patroni.yml" \
  "pg1:$pg1:$work/pg1,pg2:$pg2:$work/pg2,pg3:$pg3:$work/pg3" "$work/control.sock" \
  "harp-proxy=$harp_port" "haproxy-3s=$template" "haproxy-1s=$fast"
