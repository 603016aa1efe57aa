#!/usr/bin/env python3
"""Reaction time of harp-proxy to a leader change, measured from outside.

Per switchover: open sessions through the proxy (completed PostgreSQL startups), write the new
leader to etcd through its gateway, then time (a) until every old session is closed and (b) until
a new connection through the proxy runs `SHOW port` on the new leader. Both are timed from the
etcd write as a watcher of the leader key sees it (when the write is committed, which is what the
proxy can react to), and also from the moment the PUT request was sent.
Usage: reaction.py ETCD_PORT PROXY_PORT CLUSTER LOCATION NODE_A:PORT_A NODE_B:PORT_B [SWITCHOVERS] [SESSIONS]
"""
import base64, http.client, json, multiprocessing, select, socket, statistics, struct, sys, time, urllib.request


def startup(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    params = b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    read_until_ready(s)
    return s


def read_message(s):
    head = recv_exact(s, 5)
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    return kind, recv_exact(s, length - 4)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_until_ready(s):
    rows = []
    while True:
        kind, body = read_message(s)
        if kind == b"E":
            raise ConnectionError(body.decode(errors="replace"))
        if kind == b"D":
            n = struct.unpack("!h", body[:2])[0]
            if n:
                size = struct.unpack("!i", body[2:6])[0]
                rows.append(body[6:6 + size].decode())
        if kind == b"Z":
            return rows


def show_port(port):
    s = startup(port)
    sql = b"SHOW port\0"
    s.sendall(b"Q" + struct.pack("!i", 4 + len(sql)) + sql)
    rows = read_until_ready(s)
    s.close()
    return int(rows[0])


def put(etcd_port, key, value):
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{etcd_port}/v3/kv/put", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def watch(etcd_port, key, pipe, values=False):
    """Sends the arrival time of every change of `key`, seen through a gateway watch stream; with
    `values`, (time, value) for every write that gives it a value.

    A process of its own: a thread of this one would wait for the interpreter lock (up to 5 ms)
    whenever the main thread runs, and its times would be late by that much."""
    conn = http.client.HTTPConnection("127.0.0.1", etcd_port, timeout=None)
    body = json.dumps({"create_request": {"key": base64.b64encode(key.encode()).decode()}})
    conn.request("POST", "/v3/watch", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    while True:
        line = response.readline()
        if not line:
            return
        result = json.loads(line).get("result", {})
        if result.get("created"):
            pipe.send("ready")
        for event in result.get("events", []):
            if not values:
                pipe.send(time.monotonic())
                continue
            value = base64.b64decode(event.get("kv", {}).get("value", "")).decode()
            if event.get("type", "PUT") == "PUT" and value:
                pipe.send((time.monotonic(), value))


def summary(name, values):
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    print(f"{name:<34} min {values[0]:7.2f}  median {statistics.median(values):7.2f}  p99 {p99:7.2f}  max {values[-1]:7.2f}  ms")


def main():
    etcd_port, proxy_port, cluster, location = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    nodes = [(n.split(":")[0], int(n.split(":")[1])) for n in sys.argv[5:7]]
    switchovers = int(sys.argv[7]) if len(sys.argv) > 7 else 50
    sessions = int(sys.argv[8]) if len(sys.argv) > 8 else 5
    key = f"/harp/{cluster}/locations/{location}/leader"
    closed_ms, served_ms, put_ms, closed_w, served_w, after_close = [], [], [], [], [], []
    stale = failed = 0
    writes, sent = multiprocessing.Pipe(duplex=False)
    multiprocessing.Process(target=watch, args=(etcd_port, key, sent), daemon=True).start()
    if not writes.poll(5) or writes.recv() != "ready":
        raise SystemExit("no watch on the leader key")
    for i in range(switchovers):
        current, target = nodes[i % 2], nodes[(i + 1) % 2]
        deadline = time.monotonic() + 10
        while show_port(proxy_port) != current[1]:  # the proxy follows the current leader
            if time.monotonic() > deadline:
                raise SystemExit("the proxy does not route to the current leader")
            time.sleep(0.01)
        open_sessions = [startup(proxy_port) for _ in range(sessions)]
        t0 = time.monotonic()
        put(etcd_port, key, json.dumps({"name": target[0]}))
        put_ms.append((time.monotonic() - t0) * 1000)
        pending = list(open_sessions)
        while pending:
            ready, _, _ = select.select(pending, [], [], 5)
            if not ready:
                raise SystemExit("old sessions were not closed within 5 s")
            for s in ready:
                try:  # the proxy's FATAL 57P01 comes first, then the end of the stream
                    gone = s.recv(65536) == b""
                except ConnectionError:
                    gone = True
                if gone:
                    pending.remove(s)
                    s.close()
        closed_at = time.monotonic()
        closed_ms.append((closed_at - t0) * 1000)
        while True:
            try:
                if show_port(proxy_port) == target[1]:
                    break
                stale += 1
            except (ConnectionError, OSError):
                failed += 1
        served_at = time.monotonic()
        after_close.append((served_at - closed_at) * 1000)
        served_ms.append((served_at - t0) * 1000)
        if not writes.poll(5):
            raise SystemExit("the watch did not see the write")
        written = writes.recv()
        closed_w.append((closed_at - written) * 1000)
        served_w.append((served_at - written) * 1000)
    print(f"{switchovers} switchovers, {sessions} open sessions each, timed from the etcd write as a watcher sees it:")
    summary("every old session closed", closed_w)
    summary("new client served by the new leader", served_w)
    print("timed from the moment the PUT request was sent:")
    summary("every old session closed", closed_ms)
    summary("new client served by the new leader", served_ms)
    # Context: what the proxy does not control.
    summary("  of which: the etcd write (PUT)", put_ms)
    summary("  the new client, after the closes", after_close)
    print(f"  new clients answered by the old leader: {stale}, failed: {failed}")
    direct = []
    for _ in range(50):
        t = time.monotonic()
        show_port(nodes[0][1])
        direct.append((time.monotonic() - t) * 1000)
    summary("  baseline: direct connect + SHOW port", direct)
    proxied = []
    for _ in range(50):
        t = time.monotonic()
        show_port(proxy_port)
        proxied.append((time.monotonic() - t) * 1000)
    summary("  baseline: the same through the proxy", proxied)


if __name__ == "__main__":
    main()
