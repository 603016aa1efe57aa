#!/usr/bin/env bash
# Idle clients through one builtin instance: 1,000, 5,000 and 10,000 by default. Prints
# harp-proxy's RSS, its descriptors and the bytes each connection costs. The lead master is a
# small asyncio server that holds connections (10,000 PostgreSQL backends would not fit here),
# so what is measured is the proxy's own cost, with its CPU use while every client is idle.
#   contrib/bench/connections.sh [N ...]
source "$(dirname "$0")/../lib.sh"
command -v python3 >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq python3 >/dev/null; }
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(1000 5000 10000)
sink_port=$(free_port 25432)
python3 contrib/bench/connections.py sink "$sink_port" & pids+=($!)
start_etcd
harp_port=$(free_port 26432)
etcdput /harp/bench/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$sink_port\"}"
etcdput /harp/bench/locations/dc1/leader '{"name":"node1"}'
add_instance bench dc1 "$harp_port"
sed -i 's/max_client_conn: 1000/max_client_conn: 20000/' "$work/conf.d/bench.yml"
run_harp_proxy bench
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$harp_port) 2>/dev/null && break; sleep 0.1; done
sleep 1
echo "== idle clients through one instance ($(nproc) cores, soft fd limit raised by harp-proxy to $(awk '/Max open files/ {print $4}' /proc/$harp_pid/limits))"
python3 contrib/bench/connections.py clients "$harp_port" "$harp_pid" "${counts[@]}"
