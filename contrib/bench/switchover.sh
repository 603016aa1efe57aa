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
two_node_location
for port in "$a_port" "$b_port"; do
  "$pgbin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE TABLE bench_writes(at timestamptz DEFAULT now(), node int)"
done
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
