#!/usr/bin/env bash
# Live demo: a real etcd, one harp-proxy process with two instances (locations dc1 and dc2), and
# the lead master moving underneath it. Installs what it needs and builds a release build.
#   contrib/demo.sh          run, show what happened, clean up
#   contrib/demo.sh --keep   leave etcd and harp-proxy running and print commands to try
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
keep=false
[ "${1:-}" = "--keep" ] && keep=true
source contrib/install-deps.sh

echo "== building harp-proxy and harpctl (release)"
swift build -c release --product harp-proxy >/dev/null
swift build -c release --product harpctl >/dev/null
bin=$(swift build -c release --show-bin-path)

work=$(mktemp -d /tmp/harp-demo-XXXXXX)
free_port() { local p; for p in $(seq "$1" $(( $1 + 200 ))); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }; done; }
etcd_port=$(free_port 23790)
peer_port=$(free_port $(( etcd_port + 1 )))
p1=$(free_port 16432)
p2=$(free_port $(( p1 + 1 )))
cleanup() {
  $keep && return
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
  [ -n "${etcd_pid:-}" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting etcd on 127.0.0.1:$etcd_port (in $work)"
etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
     --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
     --initial-cluster "default=http://127.0.0.1:$peer_port" --logger zap --log-level error >"$work/etcd.log" 2>&1 &
etcd_pid=$!
export ETCDCTL_API=3
e() { etcdctl --endpoints="127.0.0.1:$etcd_port" "$@" >/dev/null; }
for _ in $(seq 50); do e endpoint health 2>/dev/null && break; sleep 0.1; done

mkdir -p "$work/conf.d"
cat >"$work/config.yml" <<YML
cluster:
  name: demo
dcs:
  driver: etcd
  endpoints: [127.0.0.1:$etcd_port]
log_level: info
YML
printf 'proxy:\n  name: proxy-dc1\n  location: dc1\n  listen_address: 127.0.0.1\n  listen_port: %s\n' "$p1" >"$work/conf.d/dc1.yml"
printf 'proxy:\n  name: proxy-dc2\n  location: dc2\n  listen_address: 127.0.0.1\n  listen_port: %s\n' "$p2" >"$work/conf.d/dc2.yml"

echo "== harp-proxy --check"
"$bin/harp-proxy" --check -f "$work/config.yml"

echo "== seeding the DCS: node1, node2 in dc1; node3 in dc2"
e put /harp/demo/nodes/node1 '{"name":"node1","location":"dc1","dsn":"host=10.0.0.1 port=5432 dbname=app"}'
e put /harp/demo/nodes/node2 '{"name":"node2","location":"dc1","dsn":"postgresql://app@10.0.0.2:5432/app"}'
e put /harp/demo/nodes/node3 '{"name":"node3","location":"dc2","dsn":"host=/var/run/postgresql port=5432"}'
e put /harp/demo/locations/dc1/leader '{"name":"node1"}'
e put /harp/demo/locations/dc2/leader '{"name":"node3"}'

echo "== starting harp-proxy (log: $work/proxy.log)"
"$bin/harp-proxy" -f "$work/config.yml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
sleep 1

echo "== switchover in dc1: node1 -> node2"
e put /harp/demo/locations/dc1/leader '{"name":"node2"}'
sleep 0.5
echo "== harpctl get leader dc1"
"$bin/harpctl" -f "$work/config.yml" get leader dc1
echo "== dc2 loses its lead master, then a bad value is written"
e del /harp/demo/locations/dc2/leader
e put /harp/demo/nodes/node4 'not json'
sleep 0.5

echo "== what harp-proxy logged"
cat "$work/proxy.log"

if $keep; then
  cat <<TXT

harp-proxy (pid $proxy_pid) and etcd (pid $etcd_pid) keep running in $work. Try:
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$etcd_port put /harp/demo/locations/dc2/leader '{"name":"node3"}'
  $bin/harpctl -f $work/config.yml get leader dc2
  tail -f $work/proxy.log
Stop with: kill $proxy_pid $etcd_pid
TXT
fi
