#!/usr/bin/env python3
"""What a Patroni leader's own life does to clients of a proxy that follows it: crashes of its
PostgreSQL (Patroni restarts it read-only, then promotes it; the leader key never changes) and
restarts of its Patroni (the leader key is written again under a new lease; PostgreSQL keeps running).

  crash N     kill -9 of the leader's postmaster, N times, while 4 writers (a connection each,
              reconnecting 2 ms after a failure) insert through the proxy: writes that failed as
              read-only, per crash, and how long the leader took to take writes again.
  restart N   N cycles of `patronictl pause`, Patroni stopped and started again, `patronictl
              resume` (Patroni's documented zero-downtime upgrade), then N kill -9 of the leader's
              Patroni started again at once: one session through the proxy runs `SELECT 1` every
              20 ms (was it ever cut?), and a new client every 50 ms (was one refused?).

Usage: patroni_node.py crash|restart N ETCD_PORT NAMESPACE SCOPE MEMBER_DIRS PROXY_PORT
  MEMBER_DIRS: pg1=DIR:PORT,pg2=DIR:PORT (DIR holds patroni.yml and data/)
"""
import json, multiprocessing, os, signal, subprocess, sys, threading, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from patroni import query, writer  # noqa: E402


def etcd_get(etcd_port, key):
    import base64
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{etcd_port}/v3/kv/range", data=body), timeout=2) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def writable(port):
    try:
        return query(port, "SELECT pg_is_in_recovery()", timeout=1) == ["f"]
    except Exception:
        return False


def patroni_pid(config):
    out = subprocess.run(["pgrep", "-f", f"patroni {config}$"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def start_patroni(config, log):
    command = ["/usr/bin/patroni", config]
    if os.getuid() == 0:
        command = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--reset-env"] + command
    return subprocess.Popen(command, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def crash(n, etcd_port, ns, scope, members, proxy_port):
    leader = etcd_get(etcd_port, f"{ns}/{scope}/leader")
    directory, port = members[leader]
    query(port, "CREATE TABLE IF NOT EXISTS node_writes (n int)")
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    writers = [multiprocessing.Process(target=writer, args=(proxy_port, stop, results, "node_writes", 0.002), daemon=True) for _ in range(4)]
    for w in writers:
        w.start()
    time.sleep(2)
    back = []
    for i in range(n):
        pid = int(open(f"{directory}/data/postmaster.pid").readline())
        os.kill(pid, signal.SIGKILL)
        crashed = time.monotonic()
        time.sleep(0.05)
        deadline = crashed + 60
        while time.monotonic() < deadline and not writable(port):
            time.sleep(0.01)
        back.append(time.monotonic() - crashed)
        now_leader = etcd_get(etcd_port, f"{ns}/{scope}/leader")
        print(f"  crash {i + 1:2d}: {leader} takes writes again after {back[-1]:.2f} s; the key names {now_leader}", flush=True)
        time.sleep(3)
    stop.set()
    totals = [results.get(timeout=30) for _ in writers]
    ok, readonly, other = (sum(t[k] for t in totals) for k in range(3))
    print(f"\n{n} crashes of {leader}'s postmaster; 4 writers through the proxy: {ok} writes, "
          f"{readonly} failed as read-only, {other} failed otherwise (connection lost or refused)")


def restart(n, etcd_port, ns, scope, members, proxy_port, logdir):
    leader = etcd_get(etcd_port, f"{ns}/{scope}/leader")
    directory, port = members[leader]
    config = f"{directory}/patroni.yml"
    import psycopg2  # Debian's python3-psycopg2 comes with patroni
    session = psycopg2.connect(host="127.0.0.1", port=proxy_port, user="postgres", dbname="postgres", connect_timeout=10)
    session.autocommit = True
    stop = threading.Event()
    state = {"queries": 0, "session_lost": 0, "clients": 0, "refused": 0, "errors": []}

    def keep_session():
        nonlocal session
        while not stop.is_set():
            try:
                session.cursor().execute("SELECT 1")
                state["queries"] += 1
            except Exception as e:
                state["session_lost"] += 1
                state["errors"].append(str(e).strip().splitlines()[0])
                session = psycopg2.connect(host="127.0.0.1", port=proxy_port, user="postgres", dbname="postgres", connect_timeout=10)
                session.autocommit = True
            time.sleep(0.02)

    def new_clients():
        while not stop.is_set():
            try:
                psycopg2.connect(host="127.0.0.1", port=proxy_port, user="postgres", dbname="postgres", connect_timeout=10).close()
                state["clients"] += 1
            except Exception as e:
                state["refused"] += 1
                state["errors"].append(str(e).strip().splitlines()[0])
            time.sleep(0.05)

    threads = [threading.Thread(target=keep_session), threading.Thread(target=new_clients)]
    for t in threads:
        t.start()
    patronictl = ["patronictl", "-c", config]

    def wait_api():
        for _ in range(300):
            try:
                api = json.loads(etcd_get(etcd_port, f"{ns}/{scope}/members/{leader}") or "{}").get("api_url", "")
                with urllib.request.urlopen(api, timeout=1) as r:
                    if r.status == 200:
                        return True
            except Exception:
                time.sleep(0.1)
        return False

    for kind in ("pause/restart/resume", "kill -9 and start"):
        for i in range(n):
            before = (state["session_lost"], state["refused"])
            if kind.startswith("pause"):
                subprocess.run(patronictl + ["pause", "--wait", scope], capture_output=True, check=True)
                os.kill(patroni_pid(config), signal.SIGTERM)
            else:
                os.kill(patroni_pid(config), signal.SIGKILL)
            for _ in range(300):
                if patroni_pid(config) is None:
                    break
                time.sleep(0.05)
            start_patroni(config, f"{logdir}/{leader}.log")
            wait_api()
            time.sleep(2)
            if kind.startswith("pause"):
                subprocess.run(patronictl + ["resume", "--wait", scope], capture_output=True, check=True)
            time.sleep(2)
            print(f"  {kind} {i + 1}: the key names {etcd_get(etcd_port, f'{ns}/{scope}/leader')}; "
                  f"session cut {state['session_lost'] - before[0]} times, new clients refused {state['refused'] - before[1]}", flush=True)
    stop.set()
    for t in threads:
        t.join()
    print(f"\n{n} pause/restart/resume cycles and {n} kill -9 restarts of {leader}'s Patroni: "
          f"the session ran {state['queries']} queries and was cut {state['session_lost']} times; "
          f"{state['clients']} new clients served, {state['refused']} refused")
    for e in state["errors"][:5]:
        print(f"  error: {e}")


def main():
    scenario, n, etcd_port, ns, scope = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    members = {}
    for m in sys.argv[6].split(","):
        name, rest = m.split("=", 1)
        directory, port = rest.rsplit(":", 1)
        members[name] = (directory, int(port))
    proxy_port = int(sys.argv[7])
    if scenario == "crash":
        crash(n, etcd_port, ns, scope, members, proxy_port)
    elif scenario == "restart":
        restart(n, etcd_port, ns, scope, members, proxy_port, os.path.dirname(next(iter(members.values()))[0]))
    else:
        raise SystemExit(f"unknown scenario {scenario}: crash or restart")


if __name__ == "__main__":
    main()
