#!/usr/bin/env python3
"""Replica instances through harp-proxy and HAProxy side by side (see replicas.sh).

For each scenario a prober per proxy opens a new connection every 10 ms and asks
`SELECT current_setting('port') || ' ' || pg_is_in_recovery()`; each answer or failure is kept
with its time. Times are in ms from the scenario's moment.
Usage: replicas.py ETCD_PORT PATRONI_CONFIG MEMBERS CONTROL_SOCKET NAME=PORT ...
  MEMBERS: pg1:PORT:DIR,pg2:PORT:DIR,pg3:PORT:DIR
"""
import json, multiprocessing, os, re, socket, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from patroni import query, streams  # noqa: E402
from reaction import watch  # noqa: E402


class Prober:
    """New clients through one port, one every 10 ms (a slow one does not hold up the next)."""

    def __init__(self, port):
        self.port, self.results, self.lock = port, [], threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def attempt(self):
        sent = time.monotonic()
        try:
            rows = query(self.port, "SELECT current_setting('port') || ' ' || pg_is_in_recovery()", timeout=5)
            answer = rows[0] if rows else None
        except Exception:
            answer = None
        with self.lock:
            self.results.append((sent, time.monotonic(), answer))

    def run(self):
        while not self.stop.is_set():
            threading.Thread(target=self.attempt, daemon=True).start()
            time.sleep(0.01)

    def results_so_far(self):
        with self.lock:
            return list(self.results)


def probe(proxies, seconds, action):
    """Runs `action` (which returns the scenario's moment) with a prober per proxy, then waits
    `seconds` more; the results of each, and the moment."""
    probers = {name: Prober(port) for name, port in proxies}
    time.sleep(0.5)
    moment = action()
    time.sleep(seconds)
    for p in probers.values():
        p.stop.set()
    for p in probers.values():
        p.thread.join()
    time.sleep(5.5)  # the last attempts end (their timeout is 5 s)
    return {name: p.results_so_far() for name, p in probers.items()}, moment


def ms(t, moment):
    return (t - moment) * 1000


def sessions(port):
    return int(query(port, "SELECT sessions FROM pg_stat_database WHERE datname = 'postgres'")[0])


def status(control):
    s = socket.socket(socket.AF_UNIX)
    s.connect(control)
    s.sendall(b"status replicas\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data.decode().splitlines()[0])


def candidates(control):
    try:
        return sorted(c["name"] for c in status(control).get("replicas", {}).get("candidates", []))
    except Exception:
        return []


def caught_up(leader, member, port, control):
    """Waits until `member` replays within 64 kB of the leader and harp-proxy has it as a candidate
    again, so that one scenario does not start in the last one's wake."""
    wait = time.monotonic() + 120
    while time.monotonic() < wait:
        try:
            behind = query(leader, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication "
                                   f"WHERE application_name = '{member}'")
            if behind and float(behind[0]) < 65536 and streams(port) and member in candidates(control):
                return
        except Exception:
            pass
        time.sleep(0.2)


def postmaster(directory):
    with open(os.path.join(directory, "data", "postmaster.pid")) as f:
        return int(f.readline())


def main():
    etcd_port, config = int(sys.argv[1]), sys.argv[2]
    members = {}
    for m in sys.argv[3].split(","):
        name, port, directory = m.split(":", 2)
        members[name] = (int(port), directory)
    control = sys.argv[4]
    proxies = [(p.split("=")[0], int(p.split("=")[1])) for p in sys.argv[5:]]
    port_of = {name: port for name, (port, _) in members.items()}

    # Spread and throughput: pgbench -S -C, a new connection per transaction.
    print("spread: pgbench -S -C -c 4 -j 2 -T 10, the members' shares of the sessions")
    for name, port in proxies:
        before = {m: sessions(p) for m, p in port_of.items()}
        out = subprocess.run(["/usr/lib/postgresql/15/bin/pgbench", "-S", "-C", "-c", "4", "-j", "2", "-T", "10", "-n",
                              "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"], capture_output=True, text=True)
        tps = re.search(r"tps = ([0-9.]+)", out.stdout)
        after = {m: sessions(p) for m, p in port_of.items()}
        delta = {m: after[m] - before[m] - 1 for m in port_of}
        total = max(1, sum(delta.values()))
        shares = "  ".join(f"{m} {100 * d / total:5.1f} %" for m, d in sorted(delta.items()))
        print(f"  {name:<11} {float(tps.group(1)) if tps else 0:8.0f} tps   {shares}")

    # pg3's postmaster killed; Patroni starts it again within a loop or two.
    pg3, pg3_dir = members["pg3"]
    seen = {}

    def watch_pg3():
        start = time.monotonic()
        while time.monotonic() - start < 30 and "back" not in seen:
            now = time.monotonic()
            if "dropped" not in seen and "pg3" not in candidates(control):
                seen["dropped"] = now
            if "dropped" in seen and "pg3" in candidates(control):
                seen["candidate"] = now
            if time.monotonic() - start > 0.2 and streams(pg3):
                seen["back"] = time.monotonic()
            time.sleep(0.01)

    def kill():
        t = time.monotonic()
        os.kill(postmaster(pg3_dir), 9)
        threading.Thread(target=watch_pg3, daemon=True).start()
        return t
    results, moment = probe(proxies, 20, kill)
    print("crash: pg3's postmaster killed -9 (Patroni's loop_wait: 1 s)")
    for name, rows in results.items():
        after = [r for r in rows if r[0] >= moment]
        failed = [r for r in after if r[2] is None]
        last = max((ms(r[0], moment) for r in failed), default=None)
        line = f"  {name:<11} {len(after)} clients, {len(failed)} failed"
        if last is not None:
            line += f", the last failure sent {last:.0f} ms after the kill"
        print(line)
    if "dropped" in seen:
        print(f"  harp-proxy dropped pg3 from its candidates {ms(seen['dropped'], moment):.0f} ms after the kill")
    back = seen.get("back")
    print("rejoin: from pg3 streaming again (Patroni restarted it) to its first client"
          + (f", {ms(back, moment):.0f} ms after the kill" if back else ": pg3 did not stream again within 20 s"))
    for name, rows in results.items():
        first = min((r[1] for r in rows if back and r[0] >= moment and r[2] and r[2].startswith(f"{pg3} ")), default=None)
        print(f"  {name:<11} " + (f"{ms(first, back):.0f} ms" if first else "none"))
    if back and "candidate" in seen:
        print(f"  harp-proxy made pg3 a candidate again {ms(seen['candidate'], back):.0f} ms after it streamed (its member record said running)")

    # pg2 falls behind: replay paused while the leader writes.
    pg1, pg2 = port_of["pg1"], port_of["pg2"]
    caught_up(pg1, "pg2", pg2, control)
    query(pg1, "CREATE TABLE IF NOT EXISTS bench_lag (x text)")
    stop_writing = threading.Event()

    def write():
        while not stop_writing.is_set():
            try:
                query(pg1, "INSERT INTO bench_lag SELECT repeat('x', 1000) FROM generate_series(1, 2000)", timeout=10)
            except Exception:
                time.sleep(0.1)

    def pause():
        t = time.monotonic()
        query(pg2, "SELECT pg_wal_replay_pause()")
        threading.Thread(target=write, daemon=True).start()
        return t
    results, moment = probe(proxies, 10, pause)
    stop_writing.set()
    behind = query(pg1, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{query(pg2, 'SELECT pg_last_wal_replay_lsn()')[0]}')")[0]
    query(pg2, "SELECT pg_wal_replay_resume()")
    print(f"lag: pg2's replay paused while pg1 writes ({int(float(behind)) >> 20} MB behind at the end; harp-proxy's max_replica_lag 1MB)")
    for name, rows in results.items():
        to_pg2 = [r for r in rows if r[0] >= moment and r[2] and r[2].startswith(f"{pg2} ")]
        last = max((ms(r[0], moment) for r in to_pg2), default=None)
        print(f"  {name:<11} {len(to_pg2)} clients sent to pg2 after the pause" + (f", the last {last:.0f} ms after it" if last else ""))

    caught_up(pg1, "pg2", pg2, control)
    # pg2 falls behind as Patroni 3 reports it: its WAL receiver stopped while the leader writes.
    receiver = int(query(pg2, "SELECT pid FROM pg_stat_wal_receiver")[0])
    stop_writing = threading.Event()

    def stop_receiver():
        t = time.monotonic()
        os.kill(receiver, 19)  # SIGSTOP
        threading.Thread(target=write, daemon=True).start()
        return t
    results, moment = probe(proxies, 10, stop_receiver)
    stop_writing.set()
    os.kill(receiver, 18)  # SIGCONT
    print("lag: pg2's WAL receiver stopped while pg1 writes (Patroni 3 reports a replica's received position)")
    for name, rows in results.items():
        to_pg2 = [r for r in rows if r[0] >= moment and r[2] and r[2].startswith(f"{pg2} ")]
        last = max((ms(r[0], moment) for r in to_pg2), default=None)
        print(f"  {name:<11} {len(to_pg2)} clients sent to pg2 after the stop" + (f", the last {last:.0f} ms after it" if last else ""))

    # A switchover to pg2: does any replica client land on it once the key names it?
    # Patroni refuses a candidate more than maximum_lag_on_failover (1 MB) behind: pg2 catches up first.
    caught_up(pg1, "pg2", pg2, control)
    events, sent = multiprocessing.Pipe(duplex=False)
    multiprocessing.Process(target=watch, args=(etcd_port, "/service/dc1/leader", sent, True), daemon=True).start()
    if not events.poll(5) or events.recv() != "ready":
        raise SystemExit("no watch on the leader key")
    named = {}

    def switchover():
        t = time.monotonic()
        done = subprocess.run(["patronictl", "-c", config, "switchover", "--leader", "pg1", "--candidate", "pg2", "--force", "dc1"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  patronictl switchover failed: {done.stdout.strip()} {done.stderr.strip()}")
        while events.poll(10):
            at, value = events.recv()
            if value.strip() == "pg2":
                named["at"] = at
                break
        return t
    results, moment = probe(proxies, 8, switchover)
    key = named.get("at")
    print("switchover pg1 -> pg2: replica clients on pg2 once the leader key names it" + ("" if key else " (the key never named pg2)"))
    for name, rows in results.items():
        on_new = [r for r in rows if key and r[1] >= key and r[2] and r[2].startswith(f"{pg2} ")]
        writable = [r for r in on_new if r[2].endswith(" false")]
        last = max((ms(r[1], key) for r in on_new), default=None)
        print(f"  {name:<11} {len(on_new)} clients answered by pg2 ({len(writable)} out of recovery)"
              + (f", the last {last:.0f} ms after the key" if last is not None else ""))


if __name__ == "__main__":
    main()
