#!/usr/bin/env bash
# Live demo: real etcd, three real PostgreSQL servers, and one harp-proxy process with two
# instances (locations dc1 and dc2). Clients go through the proxy while the lead master of dc1
# moves; then dc2 loses its lead master. Installs what it needs and builds a release build.
#   contrib/demo.sh          run, show what happened, clean up
#   contrib/demo.sh --keep   leave everything running and print commands to try
set -euo pipefail
keep=false
[ "${1:-}" = "--keep" ] && keep=true
source "$(dirname "$0")/lib.sh"
if $keep; then trap - EXIT; fi

step() { printf '\n== %s\n' "$*"; }
psql_through() { "$pgbin/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>&1; }

n1=$(free_port 25432); n2=$(free_port $(( n1 + 1 ))); n3=$(free_port $(( n2 + 1 )))
step "starting PostgreSQL node1 (:$n1) and node2 (:$n2) in dc1, node3 (:$n3) in dc2, and etcd (:$etcd_port)"
start_postgres node1 "$n1"; start_postgres node2 "$n2"; start_postgres node3 "$n3"
start_etcd

step "seeding the DCS (the keys harp-manager would write)"
etcdput /harp/demo/nodes/node1 "{\"name\":\"node1\",\"location\":\"dc1\",\"dsn\":\"host=127.0.0.1 port=$n1 dbname=postgres\"}"
etcdput /harp/demo/nodes/node2 "{\"name\":\"node2\",\"location\":\"dc1\",\"dsn\":\"postgresql://postgres@127.0.0.1:$n2/postgres\"}"
etcdput /harp/demo/nodes/node3 "{\"name\":\"node3\",\"location\":\"dc2\",\"dsn\":\"host=$work/node3 port=$n3\"}"
etcdput /harp/demo/locations/dc1/leader '{"name":"node1"}'
etcdput /harp/demo/locations/dc2/leader '{"name":"node3"}'
ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" get --prefix /harp/demo/ | paste - - | sed 's/^/   /'

p1=$(free_port 16432); p2=$(free_port $(( p1 + 1 )))
add_instance proxy-dc1 dc1 "$p1"
add_instance proxy-dc2 dc2 "$p2"
run_harp_proxy demo info
step "harp-proxy --check -f config.yml (config.yml plus one conf.d file per instance)"
"$bin/harp-proxy" --check -f "$work/config.yml"
for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$p1" && "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$p2" && break; sleep 0.1; done

step "clients through each instance (SELECT current_setting('port'))"
echo "   proxy-dc1 :$p1 -> port $(psql_through "$p1" "SELECT current_setting('port')")   (node1 is :$n1)"
echo "   proxy-dc2 :$p2 -> port $(psql_through "$p2" "SELECT current_setting('port')")   (node3 is :$n3, over its Unix socket)"

step "a transaction is open through proxy-dc1 while dc1's lead master moves to node2"
"$pgbin/psql" -X -h 127.0.0.1 -p "$p1" -U postgres -d postgres -c "BEGIN; SELECT pg_sleep(30); COMMIT;" >"$work/open-session.log" 2>&1 &
session=$!
sleep 0.5
t0=$(date +%s%N)
etcdput /harp/demo/locations/dc1/leader '{"name":"node2"}'
wait "$session" 2>/dev/null || true
t1=$(date +%s%N)
echo "   the open session was cut $(( (t1 - t0) / 1000000 )) ms after the etcd write (as the shell saw it): $(tr '\n' ' ' <"$work/open-session.log" | cut -c1-90)"
echo "   the next client lands on port $(psql_through "$p1" "SELECT current_setting('port')")   (node2 is :$n2)"

step "a writer through proxy-dc1 while the lead master moves back to node1"
"$pgbin/psql" -X -q -h 127.0.0.1 -p "$n1" -U postgres -d postgres -c "CREATE TABLE IF NOT EXISTS demo(at timestamptz default now(), node text)" >/dev/null
"$pgbin/psql" -X -q -h 127.0.0.1 -p "$n2" -U postgres -d postgres -c "CREATE TABLE IF NOT EXISTS demo(at timestamptz default now(), node text)" >/dev/null
ok=0; failed=0; before=""; after=""
for i in $(seq 40); do
  [ "$i" -eq 20 ] && { etcdput /harp/demo/locations/dc1/leader '{"name":"node1"}'; echo "   (write $i: leader key set to node1)"; }
  if out=$(psql_through "$p1" "INSERT INTO demo(node) VALUES (current_setting('port')) RETURNING node"); then
    ok=$((ok + 1)); [ "$i" -lt 20 ] && before=$out || after=$out
  else
    failed=$((failed + 1))
  fi
  sleep 0.05
done
echo "   $ok writes succeeded, $failed failed; before the switch they reached :$before, after it :$after"

step "dc2 loses its lead master: a new client is held for hold_timeout (5 s), then told why"
ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" del /harp/demo/locations/dc2/leader >/dev/null
echo "   $(psql_through "$p2" "SELECT 1" | head -1)"

step "the control socket: echo 'status proxy-dc1' | socat - UNIX-CONNECT:$work/control.sock"
echo "   $(echo 'status proxy-dc1' | socat -t 2 - "UNIX-CONNECT:$work/control.sock")"

step "what harp-proxy logged"
sed 's/^/   /' "$work/harp-proxy.log"

if $keep; then
  cat <<TXT

Everything keeps running in $work. Try:
  psql -h 127.0.0.1 -p $p1 -U postgres -c "SELECT current_setting('port')"
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$etcd_port put /harp/demo/locations/dc2/leader '{"name":"node3"}'
  $bin/harpctl -f $work/config.yml get leader dc1
  echo status | socat - UNIX-CONNECT:$work/control.sock
  echo 'unmanage proxy-dc1' | socat - UNIX-CONNECT:$work/control.sock
  tail -f $work/harp-proxy.log
Stop with: kill ${pids[*]}
TXT
fi
