#!/usr/bin/env python3
"""Time from a Patroni switchover to the first new client served by the new leader, through
harp-proxy (leader_source: patroni) and through HAProxy with Patroni's REST checks, side by side.

Per switchover: `patronictl switchover`; an etcd watcher (a process of its own) sees the leader key
name the new member; a direct prober sees the new member leave recovery. Reference moment: the
later of the two. For each proxy, a prober opens a new connection every few ms and runs
`SELECT current_setting('port'), pg_is_in_recovery()`; its first answer from the new member, out of
recovery, is the proxy's time. A writer through harp-proxy counts writes that failed as
read-only (there must be none).
Usage: patroni.py ETCD_PORT NAMESPACE SCOPE PATRONI_CONFIG MEMBERS SWITCHOVERS NAME=PORT ...
  MEMBERS: pg1:PORT,pg2:PORT
"""
import multiprocessing, os, socket, struct, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reaction import read_until_ready, summary, watch  # noqa: E402


def query(port, sql, timeout=2):
    """One new connection, one simple query: the first column of each row, or an exception."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        params = b"user\0postgres\0database\0postgres\0\0"
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        read_until_ready(s)
        body = sql.encode() + b"\0"
        s.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
        return read_until_ready(s)
    finally:
        s.close()


def probe(port, want_port, deadline, pipe):
    """The first moment a new connection through `port` is answered by `want_port`, out of recovery.
    Connections follow one another every 2 ms, as new clients keep coming. One that is held (as
    harp-proxy holds a client from the moment the old leader stops listening until the new one takes
    writes, over a second) or stuck (in a proxy's queue) waits up to 10 s for its answer, and after
    200 ms the next one starts beside it: so neither a client that gave up just as it was being
    served nor one stuck behind a dead server hides the moment a newly arriving client is served."""
    import threading
    served, lock = [], threading.Lock()

    def attempt():
        try:
            rows = query(port, "SELECT current_setting('port') || ' ' || pg_is_in_recovery()", timeout=10)
            if rows and rows[0] == f"{want_port} false":
                with lock:
                    served.append(time.monotonic())
        except Exception:
            pass

    while time.monotonic() < deadline:
        with lock:
            if served:
                break
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(0.2)
        time.sleep(0.002)
    with lock:
        pipe.send(min(served) if served else None)


def streams(port):
    """Whether the member on `port` is a replica streaming from the leader."""
    try:
        return query(port, "SELECT status FROM pg_stat_wal_receiver", timeout=1) == ["streaming"]
    except Exception:
        return False


def writer(port, stop, result, table="bench_writes", pause=0.0):
    """Inserts into `table` on one connection; after a failure, a new connection `pause` s later.
    Puts (writes, failed as read-only, failed otherwise) on `result` when stopped."""
    ok = readonly = other = 0
    s = None
    while not stop.is_set():
        try:
            if s is None:
                s = socket.create_connection(("127.0.0.1", port), timeout=20)
                params = b"user\0postgres\0database\0postgres\0\0"
                s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
                read_until_ready(s)
            body = f"INSERT INTO {table} VALUES (1)\0".encode()
            s.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
            read_until_ready(s)
            ok += 1
        except OSError as e:  # ConnectionError included: the server's error text is in it
            if "read-only" in str(e):
                readonly += 1
            else:
                other += 1
            s = None
            time.sleep(pause)
    result.put((ok, readonly, other))


def main():
    etcd_port, namespace, scope, config = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    members = [(m.split(":")[0], int(m.split(":")[1])) for m in sys.argv[5].split(",")]
    switchovers = int(sys.argv[6])
    proxies = [(p.split("=")[0], int(p.split("=")[1])) for p in sys.argv[7:]]
    key = f"{namespace}/{scope}/leader"
    events, sent = multiprocessing.Pipe(duplex=False)
    multiprocessing.Process(target=watch, args=(etcd_port, key, sent, True), daemon=True).start()
    if not events.poll(5) or events.recv() != "ready":
        raise SystemExit("no watch on the leader key")
    query(members[0][1], "CREATE TABLE IF NOT EXISTS bench_writes (n int)")
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    harp_port = dict(proxies)["harp-proxy"]
    write_process = multiprocessing.Process(target=writer, args=(harp_port, stop, results), daemon=True)
    write_process.start()
    times = {name: [] for name, _ in proxies}
    for i in range(switchovers):
        (old, _), (new, new_port) = members[i % 2], members[(i + 1) % 2]
        # The candidate must stream from the leader, or Patroni refuses the switchover (a member
        # demoted by the previous one can take more than the pause below to rejoin).
        rejoin = time.monotonic() + 60
        while time.monotonic() < rejoin and not streams(new_port):
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        pipes = {}
        for name, port in proxies + [("direct", new_port)]:
            mine, theirs = multiprocessing.Pipe(duplex=False)
            multiprocessing.Process(target=probe, args=(port, new_port, deadline, theirs), daemon=True).start()
            pipes[name] = mine
        while events.poll(0):
            events.recv()
        done = subprocess.run(["patronictl", "-c", config, "switchover", "--leader", old, "--candidate", new, "--force", scope],
                              capture_output=True, text=True)
        if done.returncode != 0 or "failed" in done.stdout.lower():
            raise SystemExit(f"switchover {i + 1} failed: {done.stdout}{done.stderr}")
        named = None
        while named is None and time.monotonic() < deadline:
            if events.poll(1):
                at, value = events.recv()
                if value.strip() == new:
                    named = at
        writable = pipes["direct"].recv()
        if named is None or writable is None:
            raise SystemExit(f"switchover {i + 1}: the key named {new} at {named}, writable at {writable}")
        reference = max(named, writable)
        line = [f"switchover {i + 1:2d} {old}->{new}: writable {1000 * (writable - named):+7.1f} ms after the key"]
        for name, _ in proxies:
            served = pipes[name].recv()
            if served is not None:
                times[name].append(1000 * (served - reference))
                line.append(f"{name} {1000 * (served - reference):8.1f}")
            else:
                line.append(f"{name} timeout")
        print("  " + "  ".join(line), flush=True)
        # Let Patroni settle the old leader as a replica, and HAProxy with the template timing
        # mark it down (3 failed checks, 3 s apart): until then it still sends clients there, and
        # one that lands on the next new leader before it is promoted is served early by chance.
        time.sleep(10)
    stop.set()
    ok, readonly, other = results.get(timeout=30)
    print()
    print(f"{switchovers} switchovers; from the later of: the key naming the new leader, the new leader accepting writes")
    for name, _ in proxies:
        if times[name]:
            summary(f"first served, {name}", times[name])
        else:
            print(f"first served, {name}: no figures")
    print(f"writer through harp-proxy: {ok} writes, {readonly} failed as read-only, {other} failed otherwise (a cut connection)")


if __name__ == "__main__":
    main()
