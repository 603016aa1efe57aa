#!/usr/bin/env bash
# Slow readers on the kernel data path (as root): each client half-closes, then reads a large
# answer late, so that its pair moves to user space, often with megabytes still to come; every
# byte is checked (contrib/bench/moves.py). Prints the clients that did not get the whole answer,
# the totals (whole, reset after a correct prefix, wrong: must be 0), and harp-proxy's ERROR
# lines: a reset comes with "the kernel handed N bytes ... twice" (README, "A second Linux trap").
#   contrib/bench/moves.sh [CLIENTS] [AT_A_TIME] [SIZE_MIB]     (default 200 3 64)
source "$(dirname "$0")/../lib.sh"
command -v python3 >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq python3 >/dev/null; }
[ "$(id -u)" -eq 0 ] || { echo "the kernel data path needs root (CAP_BPF, CAP_NET_ADMIN)" >&2; exit 1; }
clients=${1:-200} workers=${2:-3} size=${3:-64}
answer_port=$(free_port 25432)
python3 contrib/bench/moves.py answer "$answer_port" "$size" & pids+=($!)
start_etcd
harp_port=$(free_port 26432)
etcdput /harp/bench/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$answer_port\"}"
etcdput /harp/bench/locations/dc1/leader '{"name":"node1"}'
add_instance bench dc1 "$harp_port" "data_path: kernel"
run_harp_proxy bench
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$harp_port) 2>/dev/null && break; sleep 0.1; done
sleep 1
echo "== $clients slow readers of $size MiB each, $workers at a time, data_path kernel (Linux $(uname -r), $(nproc) cores)"
python3 contrib/bench/moves.py clients "$harp_port" "$clients" "$workers" "$size"
echo "== harp-proxy's ERROR lines: $(grep -c 'level=error' "$work/harp-proxy.log" || true)"
grep 'level=error' "$work/harp-proxy.log" | head -5 || true
