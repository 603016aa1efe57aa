#!/usr/bin/env python3
"""Idle connections through harp-proxy: its RSS, descriptors and bytes per connection.

sink PORT                       a stand-in lead master that accepts and holds connections
clients PROXY_PORT PID N...     for each N: open N idle clients through the proxy, measure, close
"""
import asyncio, os, resource, socket, sys, time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def sink(port):
    held = []

    async def hold(reader, writer):
        held.append(writer)
        await reader.read()  # until the proxy passes on the client's hang-up
        writer.close()        # then close, as PostgreSQL would
        held.remove(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def proc(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def idle_cpu(pid, seconds=5):
    """harp-proxy's CPU use, in % of one core, while every client is idle."""
    start, t = cpu_seconds(pid), time.time()
    time.sleep(seconds)
    return (cpu_seconds(pid) - start) / (time.time() - t) * 100


def clients(port, pid, counts):
    base_rss, base_fds = proc(pid, "VmRSS"), fds(pid)
    print(f"harp-proxy before: RSS {base_rss / 1024:.1f} MiB, {base_fds} descriptors")
    print(f"{'clients':>8} {'joined':>7} {'RSS MiB':>9} {'fds':>7} {'bytes/conn':>11} {'idle CPU':>9}")
    for n in counts:
        socks, failed = [], 0
        for _ in range(n):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                failed += 1
        deadline = time.time() + 30
        while fds(pid) < base_fds + 2 * n and time.time() < deadline:
            time.sleep(0.1)  # every client joined to the sink: two descriptors each
        time.sleep(1)
        rss, count = proc(pid, "VmRSS"), fds(pid)
        joined = max(1, (count - base_fds) // 2)  # beyond the descriptor budget, clients are refused
        per = (rss - base_rss) * 1024 / joined
        cpu = idle_cpu(pid)
        note = f"   ({failed} could not connect)" if failed else ""
        print(f"{n:>8} {joined:>7} {rss / 1024:>9.1f} {count:>7} {per:>11.0f} {cpu:>8.1f}%{note}")
        for s in socks:
            s.close()
        deadline = time.time() + 30
        while fds(pid) > base_fds + 8 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)


raise_nofile()
if sys.argv[1] == "sink":
    asyncio.run(sink(int(sys.argv[2])))
else:
    clients(int(sys.argv[2]), int(sys.argv[3]), [int(n) for n in sys.argv[4:]])
