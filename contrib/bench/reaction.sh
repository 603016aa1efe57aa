#!/usr/bin/env bash
# Reaction time to a leader change: etcd write -> old sessions closed, and -> a new client served
# by the new leader, over many switchovers (contrib/bench/reaction.py does the timing).
#   contrib/bench/reaction.sh [SWITCHOVERS] [SESSIONS]
source "$(dirname "$0")/../lib.sh"
command -v python3 >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq python3 >/dev/null; }
a_port=$(free_port 25432)
b_port=$(free_port $(( a_port + 1 )))
start_postgres node1 "$a_port"
start_postgres node2 "$b_port"
start_etcd
harp_port=$(free_port 26432)
etcdput /harp/bench/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$a_port\"}"
etcdput /harp/bench/nodes/node2 "{\"name\":\"node2\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$b_port\"}"
etcdput /harp/bench/locations/dc1/leader '{"name":"node1"}'
start_harp_proxy "$harp_port" dc1
for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$harp_port" && break; sleep 0.1; done
python3 contrib/bench/reaction.py "$etcd_port" "$harp_port" bench dc1 "node1:$a_port" "node2:$b_port" "${1:-100}" "${2:-5}"
