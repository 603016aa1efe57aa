"""Slow readers through a `data_path: kernel` instance, for contrib/bench/moves.sh.

  moves.py answer PORT SIZE_MIB        the lead master: answers "ok" to a first line, then
                                       SIZE_MIB of numbered bytes to a second line, and closes
  moves.py clients PORT RUNS WORKERS SIZE_MIB
                                       RUNS clients (WORKERS at a time), each sends a line, reads
                                       "ok", sends a second line, half-closes, sleeps 0.3 to 2 s,
                                       then reads to the end and checks every byte

Each client's pair falls behind in the kernel, so it moves to user space, often with megabytes
still to come. Prints one line per client that did not get the whole answer, then the totals:
whole, reset after a correct prefix, and wrong (any byte out of place: must stay 0).
"""
import concurrent.futures
import random
import socket
import struct
import sys
import threading
import time


def numbered(size):
    """`size` bytes in which each 4-byte word holds its own index."""
    return b"".join(struct.pack("<I", i & 0xFFFFFFFF) for i in range(size // 4))


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            return line
        line += byte
    return line


def answer(port, size):
    payload = numbered(size)

    def serve(conn):
        with conn:
            try:
                read_line(conn)
                time.sleep(0.3)
                conn.sendall(b"ok\n")
                read_line(conn)
                conn.sendall(payload)
            except OSError:
                pass  # the proxy reset the connection

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def clients(port, runs, workers, size):
    payload = numbered(size)
    totals = {"whole": 0, "reset": 0, "wrong": 0}
    lock = threading.Lock()

    def one(run):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"hello\n")
        ok = b""
        while len(ok) < 3:
            ok += conn.recv(3 - len(ok))
        conn.sendall(b"go\n")
        conn.shutdown(socket.SHUT_WR)
        time.sleep(random.choice([0.3, 0.6, 1.0, 2.0]))
        conn.settimeout(15)
        received = bytearray()
        ending = "EOF"
        try:
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        except OSError as error:
            ending = type(error).__name__
        conn.close()
        if received == payload:
            outcome = "whole"
        elif len(received) < size and received == payload[: len(received)] and ending != "EOF":
            outcome = "reset"
        else:
            outcome = "wrong"
        with lock:
            totals[outcome] += 1
            if outcome != "whole":
                print(f"client {run}: {outcome}: {len(received)} of {size} bytes, then {ending}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(runs)))
    print(f"{runs} clients: {totals['whole']} whole, {totals['reset']} reset after a correct prefix, "
          f"{totals['wrong']} wrong")


if __name__ == "__main__":
    if sys.argv[1] == "answer":
        answer(int(sys.argv[2]), int(sys.argv[3]) << 20)
    else:
        clients(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) << 20)
