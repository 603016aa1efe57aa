#!/usr/bin/env bash
# Live demo: real etcd, two real PostgreSQL servers, and one harp-proxy process with two instances:
# proxy-dc1 (builtin mode) and proxy-dc2 (pgbouncer mode). A writer goes through proxy-dc1 while
# `harpctl promote` moves dc1's lead master; then a client of proxy-dc2 keeps its connection while
# dc2's lead master moves. Installs what it needs and builds a release build.
#   contrib/demo.sh          run, show what happened, clean up
#   contrib/demo.sh --once   the same (what CI runs)
#   contrib/demo.sh --keep   leave everything running and print commands to try
# HARP_BUILD=debug uses the debug build instead (contrib/test.sh does, to save a release build).
set -euo pipefail
keep=false
case "${1:-}" in
  --keep) keep=true ;;
  --once | "") ;;
  *) echo "usage: $0 [--once | --keep]" >&2; exit 2 ;;
esac
source "$(dirname "$0")/lib.sh"
if $keep; then trap - EXIT; fi

step() { printf '\n== %s\n' "$*"; }
psql_through() { "$pgbin/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>&1; }
harpctl() { "$bin/harpctl" -f "$work/config.yml" "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

a=$(free_port 25432); b=$(free_port $(( a + 1 )))
step "starting PostgreSQL A (:$a) and B (:$b), and etcd (:$etcd_port)"
start_postgres A "$a"; start_postgres B "$b"
start_etcd
for port in "$a" "$b"; do psql_through "$port" "CREATE TABLE demo_writes(at timestamptz DEFAULT now(), node int)" >/dev/null; done

p1=$(free_port 16432); p2=$(free_port $(( p1 + 1 )))
fill() { sed -e "s|@PORT_A@|$a|g" -e "s|@PORT_B@|$b|g" -e "s|@SOCKET_A@|$work/A|g" -e "s|@SOCKET_B@|$work/B|g" \
             -e "s|@PROXY_DC1@|$p1|g" -e "s|@PROXY_DC2@|$p2|g" -e "s|@WORK@|$work|g" "$1"; }
mkdir -p "$work/conf.d"
fill contrib/demo/bootstrap.yml >"$work/bootstrap.yml"
for f in contrib/demo/conf.d/*.yml; do fill "$f" >"$work/conf.d/$(basename "$f")"; done
printf '"postgres" ""\n' >"$work/users.txt"
run_harp_proxy demo info   # writes config.yml; the proxy waits for its leaders

step "harpctl apply bootstrap.yml (contrib/demo/bootstrap.yml: two locations, four nodes, proxy directives)"
harpctl apply "$work/bootstrap.yml" | sed 's/^/   /'
step "harpctl promote node1 (dc1) and node3 (dc2)"
harpctl promote node1 | sed 's/^/   /'
harpctl promote node3 | sed 's/^/   /'
harpctl get nodes | sed 's/^/   /'
for _ in $(seq 200); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$p1" && "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$p2" && break; sleep 0.1; done

step "harp-proxy runs two instances (conf.d/proxy-dc1.yml: builtin, conf.d/proxy-dc2.yml: pgbouncer)"
echo "   proxy-dc1 :$p1 -> port $(psql_through "$p1" "SELECT current_setting('port')")   (node1 is A :$a)"
echo "   proxy-dc2 :$p2 -> port $(psql_through "$p2" "SELECT current_setting('port')")   (node3 is A, over its Unix socket)"

step "a writer goes through proxy-dc1 (a new connection per write) while harpctl promote node2 runs"
writes="$work/writes.log"
( for i in $(seq 150); do
    if out=$(psql_through "$p1" "INSERT INTO demo_writes(node) VALUES (current_setting('port')::int) RETURNING node"); then
      echo "$(now_ms) ok $out"
    else
      echo "$(now_ms) failed $(echo "$out" | head -1)"
    fi
    sleep 0.01
  done ) >"$writes" &
writer=$!
sleep 1
promoted_at=$(now_ms)
harpctl promote node2 | sed 's/^/   /'
wait "$writer"
before=$(awk -v t="$promoted_at" '$1 < t && $2 == "ok" {n=$3} END {print n}' "$writes")
after=$(awk '$2 == "ok" {n=$3} END {print n}' "$writes")
ok=$(grep -c " ok " "$writes" || true); failed=$(grep -c " failed " "$writes" || true)
last_old=$(awk -v p="$before" '$2 == "ok" && $3 == p {t=$1} END {print t}' "$writes")
first_new=$(awk -v p="$after" '$2 == "ok" && $3 == p {print $1; exit}' "$writes")
[ "$before" = "$a" ] && [ "$after" = "$b" ] && [ -n "$first_new" ] || { echo "error: the writes did not move from A to B:" >&2; cat "$writes" >&2; exit 1; }
echo "   before the switchover writes reached port $before (A), after it port $after (B)"
echo "   $ok writes succeeded, $failed failed; writes paused for $(( first_new - last_old )) ms between the last write on A and the first on B"
echo "   (each write is a new psql process, ~10 ms apart: the proxy cut over within that)"

step "proxy-dc2 (PgBouncer): one client connection, dc2's lead master moves from node3 (A) to node4 (B)"
held=$("$pgbin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$p2" -U postgres -d postgres 2>&1 <<SQL
SELECT 'before: port ' || current_setting('port');
\\! $bin/harpctl -f $work/config.yml promote node4 >/dev/null; sleep 1
SELECT 'after, same client connection: port ' || current_setting('port');
SQL
) || { echo "error: the client of proxy-dc2 failed: $held" >&2; exit 1; }
echo "$held" | sed 's/^/   /'
[ "$(echo "$held" | tail -1)" = "after, same client connection: port $b" ] || { echo "error: proxy-dc2 did not move to B" >&2; exit 1; }
echo "   (PgBouncer was PAUSEd, pointed at B, RELOADed and RESUMEd; the client never reconnected)"

step "the control socket: echo 'status proxy-dc2' | socat - UNIX-CONNECT:$work/control.sock"
echo "   $(echo 'status proxy-dc2' | socat -t 2 - "UNIX-CONNECT:$work/control.sock")"

step "what harp-proxy logged (leader changes)"
grep -E "lead master changed|PgBouncer|PAUSE" "$work/harp-proxy.log" | sed 's/^/   /'

if $keep; then
  cat <<TXT

Everything keeps running in $work. Try:
  psql -h 127.0.0.1 -p $p1 -U postgres -c "SELECT current_setting('port')"
  $bin/harpctl -f $work/config.yml get proxies
  $bin/harpctl -f $work/config.yml promote node1
  echo status | socat - UNIX-CONNECT:$work/control.sock
  echo 'unmanage proxy-dc1' | socat - UNIX-CONNECT:$work/control.sock
  tail -f $work/harp-proxy.log
Stop with: kill ${pids[*]}
TXT
fi
