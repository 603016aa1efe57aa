#!/usr/bin/env bash
# Planned switchovers under write load: a writer runs through harp-proxy (builtin mode) while
# `harpctl promote` alternates the lead master; prints, per switchover, the time from the etcd
# write to the first successful write on the new leader (min, median, p99, max), and draws
# switchover-timeline.png (gnuplot) in the current folder.
#   contrib/bench/switchover.sh [SWITCHOVERS]   (default 20)
here=$PWD
source "$(dirname "$0")/../lib.sh"
need=()
command -v python3 >/dev/null || need+=(python3)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if [ ${#need[@]} -gt 0 ]; then sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq "${need[@]}" >/dev/null; fi
a_port=$(free_port 25432)
b_port=$(free_port $(( a_port + 1 )))
start_postgres node1 "$a_port"
start_postgres node2 "$b_port"
for port in "$a_port" "$b_port"; do
  "$pgbin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE TABLE bench_writes(at timestamptz DEFAULT now(), node int)"
done
start_etcd
harp_port=$(free_port 26432)
etcdput /harp/bench/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$a_port dbname=postgres\"}"
etcdput /harp/bench/nodes/node2 "{\"name\":\"node2\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$b_port dbname=postgres\"}"
etcdput /harp/bench/locations/dc1/leader '{"name":"node1"}'
start_harp_proxy "$harp_port" dc1
for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$harp_port" && break; sleep 0.1; done
python3 contrib/bench/switchover.py "$bin/harpctl" "$work/config.yml" "$etcd_port" bench dc1 "$harp_port" \
  "node1:$a_port" "node2:$b_port" "${1:-20}" "$work"
gnuplot <<GP
set terminal pngcairo size 1000,600
set output "$here/switchover-timeline.png"
set title "Writes through harp-proxy around each switchover (0 = the etcd write)"
set xlabel "ms after the etcd write"
set ylabel "switchover"
set xrange [-50:250]
set yrange [0:${1:-20}+1]
set grid xtics
set key outside bottom center horizontal
plot "$work/timeline.dat" using 1:(\$3==2?\$2:1/0) with points pt 7 ps 0.3 lc rgb "gray" title "write on the old leader", \
     "" using 1:(\$3==0?\$2:1/0) with points pt 2 ps 0.8 lc rgb "red" title "failed write (connection cut, reconnecting)", \
     "" using 1:(\$3==1?\$2:1/0) with points pt 7 ps 0.3 lc rgb "forest-green" title "write on the new leader"
GP
echo "timeline: $here/switchover-timeline.png"
