#!/usr/bin/env bash
# Checks contrib/Dockerfile's run-time stage where no Docker engine runs: a debootstrapped
# Debian 12 root gets the packages that stage installs (read from the Dockerfile), the binaries
# of a --static-swift-stdlib release build, and runs harp-proxy as `postgres` with a builtin and
# a pgbouncer instance against etcd and PostgreSQL on the host's loopback, as PID 1 of its own
# PID namespace (unshare), the way a container runs it. Needs root and network
# access to a Debian mirror. Prints what it checked; exits 1 on the first failure.
#   contrib/check-image-runtime.sh
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap and chroot)" >&2; exit 2; }
source "$(dirname "$0")/lib.sh"
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null

echo "== the static release build the Dockerfile makes" >&2
swift build -c release --static-swift-stdlib --scratch-path .build-static >/dev/null
static=$(swift build -c release --static-swift-stdlib --scratch-path .build-static --show-bin-path)

# The final stage's apt-get install line, so that this check and the Dockerfile cannot drift.
packages=$(awk '/^FROM debian/ {run=1} run && /apt-get install/ {print}' contrib/Dockerfile \
  | sed -e 's/.*--no-install-recommends//' -e 's/\\$//' -e 's/&&.*//')
root="$work/rootfs"
echo "== debootstrap bookworm (minbase), then: apt-get install$packages" >&2
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1
cp /etc/resolv.conf "$root/etc/"
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true; cleanup' EXIT
chroot "$root" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages" \
  >"$work/apt.log" 2>&1 || { echo "FAILED: the run-time packages do not install" >&2; cat "$work/apt.log" >&2; exit 1; }
chroot "$root" /bin/sh -c "mkdir -p /etc/harp /run/harp-proxy /var/lib/harp/conf.d && chown postgres: /run/harp-proxy"
cp "$static/harp-proxy" "$static/harpctl" "$root/usr/local/bin/"
missing=$(chroot "$root" ldd /usr/local/bin/harp-proxy /usr/local/bin/harpctl | grep "not found" || true)
[ -z "$missing" ] || { echo "FAILED: libraries missing from the image: $missing" >&2; exit 1; }
echo "ok: every library the binaries link is in the image ($(chroot "$root" /usr/local/bin/harp-proxy --version))"

pg=$(free_port 25432); start_postgres pg "$pg"
start_etcd
etcdput /harp/img/nodes/n1 "{\"name\":\"n1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$pg dbname=postgres\"}"
etcdput /harp/img/locations/dc1/leader '{"name":"n1"}'
p1=$(free_port 26432); p2=$(free_port $(( p1 + 1 ))); http=$(free_port 28080)
cat >"$root/var/lib/harp/config.yml" <<YML
cluster: {name: img}
dcs: {driver: etcd, endpoints: [127.0.0.1:$etcd_port]}
control: {socket: /run/harp-proxy/control.sock}
http: {enable: on, host: 127.0.0.1, port: $http}
YML
printf 'proxy:\n  name: bi\n  location: dc1\n  listen_address: 127.0.0.1\n  listen_port: %s\n' "$p1" >"$root/var/lib/harp/conf.d/bi.yml"
printf 'proxy:\n  name: pgb\n  location: dc1\n  type: pgbouncer\n  listen_address: 127.0.0.1\n  listen_port: %s\n  database_name: postgres\n  auth_type: trust\n  auth_file: /var/lib/harp/users.txt\n' \
  "$p2" >"$root/var/lib/harp/conf.d/pgb.yml"
printf '"postgres" ""\n' >"$root/var/lib/harp/users.txt"
chroot "$root" chown -R postgres: /var/lib/harp
# As `docker run` would: harp-proxy is PID 1 of a new PID namespace, running as postgres.
ids="$(chroot "$root" id -u postgres):$(chroot "$root" id -g postgres)"
unshare --pid --fork chroot --userspec="$ids" "$root" /usr/local/bin/harp-proxy -f /var/lib/harp/config.yml >"$work/harp-proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do harp=$(pgrep -P "$!" || true); [ -n "$harp" ] && break; sleep 0.1; done
grep -qE "^NSpid:\s+$harp\s+1$" "/proc/$harp/status" || { echo "FAILED: harp-proxy is not PID 1 in its namespace" >&2; exit 1; }
echo "ok: harp-proxy is PID 1 of its PID namespace (host pid $harp)"
served() { "$pgbin/psql" -X -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "SHOW port" 2>/dev/null; }
for _ in $(seq 200); do [ "$(served "$p1")" = "$pg" ] && [ "$(served "$p2")" = "$pg" ] && break; sleep 0.1; done
[ "$(served "$p1")" = "$pg" ] || { echo "FAILED: the builtin instance does not route" >&2; cat "$work/harp-proxy.log" >&2; exit 1; }
[ "$(served "$p2")" = "$pg" ] || { echo "FAILED: the pgbouncer instance does not route" >&2; cat "$work/harp-proxy.log" >&2; exit 1; }
echo "ok: harp-proxy runs in the image as postgres; builtin and PgBouncer (the image's own) route to PostgreSQL"
[ "$(curl -s "http://127.0.0.1:$http/health/is-live")" = "true" ] && curl -s "http://127.0.0.1:$http/metrics" | grep -q '^harp_proxy_clients' \
  || { echo "FAILED: health or metrics" >&2; exit 1; }
echo "ok: /health/is-live and /metrics answer"
chroot "$root" /usr/local/bin/harpctl -f /var/lib/harp/config.yml get proxies >/dev/null || { echo "FAILED: harpctl" >&2; exit 1; }
echo "ok: harpctl reads the DCS from the image"
kill -TERM "$harp"
for _ in $(seq 100); do kill -0 "$harp" 2>/dev/null || break; sleep 0.1; done
grep -q "msg=stopped" "$work/harp-proxy.log" || { echo "FAILED: no clean stop on SIGTERM" >&2; tail "$work/harp-proxy.log" >&2; exit 1; }
pgrep -x pgbouncer >/dev/null && { echo "FAILED: a PgBouncer outlived harp-proxy" >&2; exit 1; }
echo "ok: SIGTERM to PID 1 stops harp-proxy and its PgBouncer cleanly"
