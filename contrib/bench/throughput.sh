#!/usr/bin/env bash
# Data-path cost: pgbench -S (select-only, 16 clients, 2 threads) directly, through HAProxy 2.6 in
# mode tcp, and through harp-proxy's builtin mode, in alternating rounds on loopback. Per round and
# target: tps, the proxy's CPU per transaction (user + system of its process / transactions), and
# the 1-client latency (pgbench -S -c 1); medians and spread (min to max) at the end.
#   contrib/bench/throughput.sh            3 rounds of 10 s each
#   ROUNDS=5 SECONDS_PER_RUN=20 contrib/bench/throughput.sh
#   RELAY=1 contrib/bench/throughput.sh    also a minimal C relay (relay.c): the floor of any
#                                          proxy that passes bytes through user space
#   CONNECT=1 contrib/bench/throughput.sh  a new connection per transaction (pgbench -C): what a
#                                          client's setup costs (accept, admission, connect)
source "$(dirname "$0")/../lib.sh"
rounds=${ROUNDS:-3}
duration=${SECONDS_PER_RUN:-10}
command -v haproxy >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq haproxy >/dev/null; }

pg_port=$(free_port 25432)
start_postgres pg "$pg_port"
start_etcd
harp_port=$(free_port 26432)
haproxy_port=$(free_port $(( harp_port + 1 )))

etcdput /harp/bench/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$pg_port\"}"
etcdput /harp/bench/locations/dc1/leader '{"name":"node1"}'
add_instance bench "dc1" "$harp_port"
run_harp_proxy bench

cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen postgres
  bind 127.0.0.1:$haproxy_port
  server pg 127.0.0.1:$pg_port
CFG
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=($haproxy_pid)
targets="direct haproxy harp-proxy"
if [ "${RELAY:-0}" = 1 ]; then
  cc=$(command -v cc || command -v clang) || { echo "RELAY=1 needs a C compiler (cc or clang)" >&2; exit 1; }
  "$cc" -O2 -pthread -o "$work/relay" contrib/bench/relay.c  # lib.sh runs from the repository's top
  relay_port=$(free_port $(( haproxy_port + 1 )))
  "$work/relay" "$relay_port" "$pg_port" "$(nproc)" &
  relay_pid=$!
  pids+=($relay_pid)
  targets+=" relay"
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$relay_port) 2>/dev/null && break; sleep 0.1; done
fi
for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$harp_port" \
  && "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$haproxy_port" && break; sleep 0.1; done

"$pgbin/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1

connect_flag=""; [ "${CONNECT:-0}" = 1 ] && connect_flag="-C"
run() { # run PORT -> tps
  "$pgbin/pgbench" -S $connect_flag -c 16 -j 2 -T "$duration" -n -h 127.0.0.1 -p "$1" -U postgres postgres 2>/dev/null \
    | awk '/^tps = / { print $3; exit }'
}
latency() { # latency PORT -> average ms of one client
  "$pgbin/pgbench" -S -c 1 -j 1 -T "$latency_seconds" -n -h 127.0.0.1 -p "$1" -U postgres postgres 2>/dev/null \
    | awk '/^latency average = / { print $4; exit }'
}
latency_seconds=${LATENCY_SECONDS:-4}
ticks() { awk '{ print $14 + $15, $14, $15 }' "/proc/$1/stat"; }  # user+system, user, system (1/100 s)
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A results cpu cpus latencies
echo "== $rounds rounds of ${duration}s: pgbench -S $connect_flag -c 16 -j 2 (haproxy $(haproxy -v | awk 'NR==1 {print $3}'), $(nproc) cores)"
for round in $(seq "$rounds"); do
  for target in $targets; do
    case $target in
      direct) port=$pg_port; pid="" ;;
      haproxy) port=$haproxy_port; pid=$haproxy_pid ;;
      harp-proxy) port=$harp_port; pid=$harp_pid ;;
      relay) port=$relay_port; pid=$relay_pid ;;
    esac
    [ -n "$pid" ] && read -r t0 u0 s0 < <(ticks "$pid")
    tps=$(run "$port")
    results[$target]+="$tps "
    if [ -n "$pid" ]; then
      read -r t1 u1 s1 < <(ticks "$pid")
      per=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$tps" -v d="$duration" 'BEGIN { printf "%.1f us user + %.1f us system", u / 100 / (n * d) * 1e6, s / 100 / (n * d) * 1e6 }')
      total=$(awk -v t=$((t1 - t0)) -v n="$tps" -v d="$duration" 'BEGIN { printf "%.1f", t / 100 / (n * d) * 1e6 }')
      cpu[$target]="$per"
      cpus[$target]+="$total "
    fi
    ms=$(latency "$port")
    latencies[$target]+="$ms "
    if [ -n "$pid" ]; then
      printf '  round %d  %-10s %10.0f tps   1-client latency %.3f ms   proxy CPU per transaction: %s\n' "$round" "$target" "$tps" "$ms" "$per"
    else
      printf '  round %d  %-10s %10.0f tps   1-client latency %.3f ms\n' "$round" "$target" "$tps" "$ms"
    fi
  done
done

direct=$(echo ${results[direct]} | tr ' ' '\n' | median)
haproxy=$(echo ${results[haproxy]} | tr ' ' '\n' | median)
harp=$(echo ${results[harp-proxy]} | tr ' ' '\n' | median)
echo
printf 'median tps: direct %.0f  haproxy %.0f  harp-proxy %.0f\n' "$direct" "$haproxy" "$harp"
awk -v h="$harp" -v x="$haproxy" -v d="$direct" 'BEGIN { printf "harp-proxy / haproxy: %.2f   haproxy / direct = %.2f   harp-proxy / direct: %.2f\n", h / x, x / d, h / d }'
spread() { tr ' ' '\n' | grep . | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s to %s", lo, hi }'; }
cpu_x=$(echo ${cpus[haproxy]} | tr ' ' '\n' | median); cpu_h=$(echo ${cpus[harp-proxy]} | tr ' ' '\n' | median)
lat_x=$(echo ${latencies[haproxy]} | tr ' ' '\n' | median); lat_h=$(echo ${latencies[harp-proxy]} | tr ' ' '\n' | median)
printf 'proxy CPU per transaction (user + system), median: haproxy %.1f us (%s)  harp-proxy %.1f us (%s)  ratio %.2f\n' \
  "$cpu_x" "$(echo ${cpus[haproxy]} | spread)" "$cpu_h" "$(echo ${cpus[harp-proxy]} | spread)" "$(awk -v h="$cpu_h" -v x="$cpu_x" 'BEGIN { print h / x }')"
printf '1-client latency, median: direct %.3f ms  haproxy %.3f ms (%s)  harp-proxy %.3f ms (%s)  ratio %.2f\n' \
  "$(echo ${latencies[direct]} | tr ' ' '\n' | median)" "$lat_x" "$(echo ${latencies[haproxy]} | spread)" "$lat_h" "$(echo ${latencies[harp-proxy]} | spread)" \
  "$(awk -v h="$lat_h" -v x="$lat_x" 'BEGIN { print h / x }')"
printf 'tps spread: haproxy %s  harp-proxy %s\n' "$(echo ${results[haproxy]} | spread)" "$(echo ${results[harp-proxy]} | spread)"
if [ "${RELAY:-0}" = 1 ]; then
  relay=$(echo ${results[relay]} | tr ' ' '\n' | median)
  awk -v r="$relay" -v x="$haproxy" -v h="$harp" 'BEGIN { printf "minimal C relay (relay.c) %.0f tps: %.2f x haproxy; harp-proxy userspace / relay = %.2f\n", r, r / x, h / r }'
  echo "relay CPU per transaction (user + system), median: $(echo ${cpus[relay]} | tr ' ' '\n' | median) us"
fi
