#!/usr/bin/env python3
"""Planned switchovers under write load, measured from outside.

A writer inserts through the proxy as fast as it can (reconnecting when a connection is cut)
while `harpctl promote` alternates the lead master. A watch on the leader key through etcd's
gateway timestamps each etcd write, as any watcher sees it. Per switchover: the time from that
write to the first successful write on the new leader. Writes a timeline for gnuplot.
Usage: switchover.py HARPCTL CONFIG ETCD_PORT CLUSTER LOCATION PROXY_PORT NODE_A:PORT_A NODE_B:PORT_B SWITCHOVERS OUT_DIR
"""
import multiprocessing, os, struct, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reaction import read_until_ready, startup, summary, watch  # noqa: E402

INSERT = b"INSERT INTO bench_writes(node) VALUES (current_setting('port')::int) RETURNING node\0"


def writer(port, events, stop):
    """Records (monotonic time, port of the node that took the write, or None for a failure)."""
    sock = None
    while not stop.is_set():
        try:
            if sock is None:
                sock = startup(port)
            sock.sendall(b"Q" + struct.pack("!i", 4 + len(INSERT)) + INSERT)
            rows = read_until_ready(sock)
            events.append((time.monotonic(), int(rows[0])))
        except (ConnectionError, OSError):
            events.append((time.monotonic(), None))
            if sock is not None:
                sock.close()
                sock = None
            time.sleep(0.001)


def main():
    harpctl, config, etcd_port, cluster, location, proxy_port = sys.argv[1:7]
    etcd_port, proxy_port = int(etcd_port), int(proxy_port)
    nodes = [(n.split(":")[0], int(n.split(":")[1])) for n in sys.argv[7:9]]
    count, out = int(sys.argv[9]), sys.argv[10]
    events, stop = [], threading.Event()
    # The watcher in a process of its own (see reaction.watch): it sends each write's arrival time.
    writes, sent = multiprocessing.Pipe(duplex=False)
    multiprocessing.Process(target=watch, args=(etcd_port, f"/harp/{cluster}/locations/{location}/leader", sent), daemon=True).start()
    if not writes.poll(5) or writes.recv() != "ready":
        raise SystemExit("no watch on the leader key")
    w = threading.Thread(target=writer, args=(proxy_port, events, stop))
    w.start()
    time.sleep(1)
    promotions = []
    for i in range(count):
        target = nodes[(i + 1) % 2]
        t0 = time.monotonic()
        subprocess.run([harpctl, "-f", config, "promote", target[0]], check=True, stdout=subprocess.DEVNULL)
        took = time.monotonic() - t0
        if not writes.poll(5):
            raise SystemExit("the watch saw no write for promote %d" % i)
        promotions.append((writes.recv(), target[1], took))
        time.sleep(1.5)
    stop.set()
    w.join()

    delays, gaps, failures = [], [], 0
    with open(os.path.join(out, "timeline.dat"), "w") as data:
        for i, (written, port, _) in enumerate(promotions):
            first = next((t for t, p in events if t >= written and p == port), None)
            if first is None:
                raise SystemExit("no write reached the new leader after switchover %d" % i)
            delays.append((first - written) * 1000)
            last_old = max((t for t, p in events if t < first and p is not None and p != port), default=None)
            if last_old is not None:
                gaps.append((first - last_old) * 1000)
            window = [(t, p) for t, p in events if written - 0.05 <= t <= written + 0.25]
            failures += sum(1 for t, p in window if p is None)
            for t, p in window:
                state = 0 if p is None else (1 if p == port else 2)
                data.write(f"{(t - written) * 1000:.3f} {i + 1} {state}\n")
    ok = sum(1 for _, p in events if p is not None)
    print(f"{count} switchovers with harpctl promote, a writer through the proxy: {ok} writes succeeded, "
          f"{len(events) - ok} failed ({failures} within 250 ms after a switchover)")
    summary("etcd write -> first write on new leader", delays)
    summary("writes interrupted (last old -> first new)", gaps)
    summary("  context: harpctl promote, whole run", [p[2] * 1000 for p in promotions])


if __name__ == "__main__":
    main()
