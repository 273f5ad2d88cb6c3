#!/usr/bin/env python3
"""Hostile HTTP clients for the issue-17 fault scripts (standard library only; raw sockets, so each attack is
exactly what it says). Every subcommand prints one JSON object on stdout with its figures.

  pipeline HOST PORT N SECONDS REQUEST   N connections (SO_RCVBUF 2048) push REQUEST pipelined, ~4 MB each,
                                         and never read
  probe HOST PORT SECONDS PATH           GET PATH on a fresh connection every 100 ms: worst/p50 latency, failures
  silent HOST PORT N SECONDS [SRC]       N connections that send nothing, from source address SRC; then the time
                                         until GET /healthz answers 200 beside them; counts how many were closed
  slowread HOST PORT RATE SECONDS REQ..  pipelines the requests, reads RATE bytes/s for SECONDS, then stops
                                         reading; reports when the server cut the connection
  raw HOST PORT                          sends stdin as is, prints the answer's status and size
  mixed HOST PORT THREADS SECONDS        closed loop, THREADS clients: POST /v1/images/generations with random
                                         n 1..16 and steps 1..4 (every batch shape the server can form)
"""
import json
import os
import select
import socket
import sys
import time


def connect(host, port, rcvbuf=None, src=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if src:
        s.bind((src, 0))
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def http_get(host, port, path, timeout=10):
    """Status of GET path on a new connection, and the seconds it took (connect included)."""
    start = time.monotonic()
    s = connect(host, port, timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else 0
    finally:
        s.close()
    return status, time.monotonic() - start


def pipeline(host, port, n, seconds, request):
    request = request.replace("\\r\\n", "\r\n").encode()
    per_connection = 4 * 1024 * 1024
    block = request * max(1, 65536 // len(request))
    socks, sent, refused = [], [], 0
    for _ in range(n):
        try:
            s = connect(host, port, rcvbuf=2048)
            s.setblocking(False)
            socks.append(s)
            sent.append(0)
        except OSError:
            refused += 1
    deadline = time.monotonic() + seconds
    closed = 0
    while time.monotonic() < deadline:
        writable = [s for s, count in zip(socks, sent) if count < per_connection and s.fileno() >= 0]
        if not writable:
            time.sleep(0.1)
            continue
        poller = select.poll()
        by_fd = {s.fileno(): s for s in writable}
        for s in writable:
            poller.register(s, select.POLLOUT)
        ready = [by_fd[fd] for fd, _ in poller.poll(200)]
        for s in ready:
            i = socks.index(s)
            try:
                sent[i] += s.send(block[: per_connection - sent[i]])
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                closed += 1
    result = {"connections": len(socks), "refused": refused, "closed_by_server": closed,
              "bytes_pushed": sum(sent), "max_pushed_per_connection": max(sent or [0])}
    for s in socks:
        s.close()
    return result


def probe(host, port, seconds, path):
    latencies, failures, statuses = [], 0, {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status, took = http_get(host, port, path, timeout=10)
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(took)
        except OSError:
            failures += 1
        time.sleep(0.1)
    latencies.sort()
    ms = lambda v: round(v * 1000, 1)
    return {"probes": len(latencies) + failures, "failures": failures, "statuses": statuses,
            "p50_ms": ms(latencies[len(latencies) // 2]) if latencies else None,
            "worst_ms": ms(latencies[-1]) if latencies else None}


def silent(host, port, n, seconds, src=None):
    socks, failed = [], 0
    opened_at = time.monotonic()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if src:
            s.bind((src, 0))
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
    # Wait until the handshakes are done (writable) or fail.
    # (poll, not select: select takes descriptors below 1024 only.)
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLOUT)
    pending = len(socks)
    while pending and time.monotonic() - opened_at < 10:
        for fd, _ in poller.poll(500):
            poller.unregister(fd)
            pending -= 1
    open_seconds = time.monotonic() - opened_at
    # Time until /healthz answers 200 beside them (1 s timeout per try).
    healthz_start = time.monotonic()
    healthz_seconds, tries, seen = None, 0, {}
    while time.monotonic() - healthz_start < seconds:
        tries += 1
        try:
            status, _ = http_get(host, port, "/healthz", timeout=1)
            seen[status] = seen.get(status, 0) + 1
            if status == 200:
                healthz_seconds = time.monotonic() - healthz_start
                break
        except OSError as e:
            seen[type(e).__name__] = seen.get(type(e).__name__, 0) + 1
        time.sleep(0.05)
    generate_status = None
    try:
        generate_status, _ = http_get(host, port, "/v1/generate?seed=1", timeout=5)
    except OSError as e:
        generate_status = type(e).__name__
    # What the silent connections saw: closed quietly, answered (503), or still open.
    time.sleep(0.5)
    closed, answered, still_open = 0, {}, 0
    for s in socks:
        try:
            data = s.recv(4096)
            if not data:
                closed += 1
            else:
                status = data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else "other"
                answered[status] = answered.get(status, 0) + 1
        except BlockingIOError:
            still_open += 1
        except OSError:
            closed += 1
        s.close()
    return {"silent": len(socks), "connect_failed": failed, "open_seconds": round(open_seconds, 3),
            "healthz_seconds": None if healthz_seconds is None else round(healthz_seconds, 3),
            "healthz_tries": tries, "healthz_seen": {str(k): v for k, v in seen.items()},
            "generate_status": generate_status, "silent_closed": closed, "silent_answered": answered,
            "silent_still_open": still_open}


def open_connections(host, port):
    """onestep_open_connections from /metrics (its own scrape included)."""
    s = connect(host, port, timeout=5)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    for line in data.decode("latin-1").splitlines():
        if line.startswith("onestep_open_connections "):
            return float(line.split()[1])
    return -1


def slowread(host, port, rate, seconds, requests):
    s = connect(host, port, rcvbuf=4096, timeout=1)
    s.sendall("".join(r.replace("\\r\\n", "\r\n") for r in requests).encode())
    received, start, cut_at, eof = 0, time.monotonic(), None, False
    while time.monotonic() - start < seconds:
        want = int(rate * (time.monotonic() - start)) - received
        if want > 0:
            try:
                data = s.recv(min(want, 4096))
            except socket.timeout:
                data = None
            except OSError:
                cut_at, eof = time.monotonic() - start, True
                break
            if data == b"":
                cut_at, eof = time.monotonic() - start, True
                break
            received += len(data or b"")
        time.sleep(0.05)
    reading_stopped = time.monotonic() - start
    stalled_cut = None
    if not eof:
        # Stop reading (reading, even to see the close, would be progress for the server): watch the server's
        # own count of open connections instead, until only the scrape's connection is left.
        wait_start = time.monotonic()
        while time.monotonic() - wait_start < 120:
            if open_connections(host, port) <= 1:
                stalled_cut = time.monotonic() - wait_start
                break
            time.sleep(0.25)
    s.close()
    return {"received_bytes": received, "cut_while_reading_s": None if cut_at is None else round(cut_at, 2),
            "read_for_s": round(reading_stopped, 2),
            "cut_after_stalling_s": None if stalled_cut is None else round(stalled_cut, 2)}


def raw(host, port):
    s = connect(host, port, timeout=10)
    s.sendall(sys.stdin.buffer.read())
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
    except socket.timeout:
        pass
    status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else 0
    return {"status": status, "bytes": len(data), "body_prefix": data.partition(b"\r\n\r\n")[2][:120].decode("latin-1")}


def mixed(host, port, threads, seconds):
    import random
    import threading
    counts, lock = {}, threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(index):
        rng = random.Random(index)
        s = None
        while time.monotonic() < deadline:
            body = json.dumps({"n": rng.randint(1, 16), "steps": rng.randint(1, 4), "seed": rng.randint(0, 1 << 30)})
            request = (f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
            try:
                if s is None:
                    s = connect(host, port, timeout=30)
                s.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
                while len(rest) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    rest += chunk
                status = head.split(b" ")[1].decode()
            except OSError as e:
                status = type(e).__name__
                if s is not None:
                    s.close()
                s = None
            with lock:
                counts[status] = counts.get(status, 0) + 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"statuses": counts}


def main():
    command, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[4:]
    if command == "pipeline":
        result = pipeline(host, port, int(args[0]), float(args[1]), args[2])
    elif command == "probe":
        result = probe(host, port, float(args[0]), args[1])
    elif command == "silent":
        result = silent(host, port, int(args[0]), float(args[1]), args[2] if len(args) > 2 else None)
    elif command == "slowread":
        result = slowread(host, port, float(args[0]), float(args[1]), args[2:])
    elif command == "mixed":
        result = mixed(host, port, int(args[0]), float(args[1]))
    elif command == "raw":
        result = raw(host, port)
    else:
        sys.exit(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
