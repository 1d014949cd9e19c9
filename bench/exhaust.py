#!/usr/bin/env python3
"""Load for bench/exhaust.sh, run inside the lab's namespaces. Every mode is
bounded in count and in time and prints one JSON line.

  flood  IFACE SRC_MAC DST_MAC --first N --count N --rate PPS --seconds S
         SYNs to 10.66.0.2:80 as raw Ethernet frames on IFACE, from the
         spoofed sources 10.66.0.100-199 (labelled spaceships in the run's
         endpoints, so each SYN opens an L7 flow; nobody answers for them,
         so the flows stay half-open). --first picks the first tuple, so
         successive calls open new flows.
  slow   --http N --memcache N --interval S --seconds S [--burst B]
         slowloris: N connections each to HTTP and memcached, one byte of a
         never-ending request per connection every S seconds; HTTP heads
         start with B bytes at once (the enforcer holds them, undecided).
  hold   --count N --seconds S --ready FILE --stop FILE
         N idle memcached connections (handshake done, no request): opened
         at a bounded pace, --ready written once all are up, held S seconds
         or until --stop exists.
  sink   --seconds S --stop FILE
         accepts on :11211 (SO_REUSEPORT: run several) and holds what it
         accepts, for the idle connections (one process has 20 000 files).
  http   --seconds S --max N      a normal client: one connection per GET /v1/
  mc     --seconds S --max N      a normal client: one connection per get
"""

import argparse
import json
import os
import math
import select as select_mod
import selectors
import socket
import struct
import sys
import time

SERVER = "10.66.0.2"


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(src_mac, dst_mac, src, sport, dst, dport, seq):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def flood(a):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.iface, 0))
    src_mac = bytes.fromhex(a.src_mac.replace(":", ""))
    dst_mac = bytes.fromhex(a.dst_mac.replace(":", ""))
    dst = socket.inet_aton(SERVER)
    start = time.monotonic()
    sent = 0
    for i in range(a.first, a.first + a.count):
        # 100 spoofed sources x source ports from 1024: distinct 4-tuples.
        src = socket.inet_aton("10.66.0.%d" % (100 + i % 100))
        sport = 1024 + (i // 100) % 64000
        s.send(syn_frame(src_mac, dst_mac, src, sport, dst, 80, (i * 2654435761) & 0xFFFFFFFF))
        sent += 1
        if a.rate and sent % 100 == 0:
            ahead = sent / a.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() - start > a.seconds:
            break
    el = time.monotonic() - start
    print(json.dumps({"mode": "flood", "sent": sent, "seconds": round(el, 2), "pps": round(sent / max(el, 1e-9))}))


def slow(a):
    sel = selectors.DefaultSelector()
    conns = []
    failed = 0
    http_head = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX-Slow: " + b"a" * a.burst
    for port, n, head in ((80, a.http, http_head),
                          (11211, a.memcache, b"get xwing-coord")):
        for _ in range(n):
            c = socket.socket()
            c.settimeout(2)
            try:
                c.connect((SERVER, port))
            except OSError:
                failed += 1
                c.close()
                continue
            sent0 = 0
            if len(head) > 64:
                try:
                    c.sendall(head[:-16])
                    sent0 = len(head) - 16
                except OSError:
                    pass
            c.setblocking(False)
            conns.append({"sock": c, "head": head, "sent": sent0, "port": port, "open": True})
            sel.register(c, selectors.EVENT_READ, conns[-1])
    start = time.monotonic()
    closed = {80: 0, 11211: 0}
    sent = 0
    while time.monotonic() - start < a.seconds:
        tick = time.monotonic()
        for c in conns:
            if not c["open"]:
                continue
            h = c["head"]
            # The head, then padding forever: the request never completes.
            b = h[c["sent"]:c["sent"] + 1] if c["sent"] < len(h) else b"a"
            try:
                c["sock"].send(b)
                c["sent"] += 1
                sent += 1
            except OSError:
                c["open"] = False
                closed[c["port"]] += 1
        # Anything the peer says (a reply, EOF) ends that connection.
        while True:
            left = a.interval - (time.monotonic() - tick)
            if left <= 0:
                break
            for key, _ in sel.select(timeout=left):
                c = key.data
                try:
                    data = c["sock"].recv(4096)
                except OSError:
                    data = b""
                if not data and c["open"]:
                    c["open"] = False
                    closed[c["port"]] += 1
                    sel.unregister(c["sock"])
    still = sum(1 for c in conns if c["open"])
    for c in conns:
        c["sock"].close()
    print(json.dumps({"mode": "slow", "opened": len(conns), "connect_failed": failed,
                      "open_at_end": still, "closed_http": closed[80],
                      "closed_memcache": closed[11211], "bytes_sent": sent}))


def hold(a):
    import resource
    need = a.count + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    conns, failed = [], 0
    start = time.monotonic()
    pending = []
    # Non-blocking connects, at most 256 in flight: a paced handshake rate.
    while len(conns) + failed < a.count and time.monotonic() - start < a.seconds:
        while len(pending) < 256 and len(conns) + len(pending) + failed < a.count:
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex((SERVER, 11211))
            pending.append(c)
        # poll, not select: descriptors go far past FD_SETSIZE.
        pl = select_mod.poll()
        by_fd = {c.fileno(): c for c in pending}
        for fd in by_fd:
            pl.register(fd, select_mod.POLLOUT)
        for fd, _ in pl.poll(1000):
            c = by_fd[fd]
            pending.remove(c)
            if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                conns.append(c)
            else:
                failed += 1
                c.close()
    up = time.monotonic() - start
    with open(a.ready, "w") as f:
        f.write("%d\n" % len(conns))
    while time.monotonic() - start < a.seconds and not os.path.exists(a.stop):
        time.sleep(0.5)
    for c in conns + pending:
        c.close()
    print(json.dumps({"mode": "hold", "held": len(conns), "failed": failed, "connect_seconds": round(up, 2)}))


def sink(a):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind(("0.0.0.0", 11211))
    ls.listen(4096)
    ls.settimeout(0.5)
    held = []
    start = time.monotonic()
    while time.monotonic() - start < a.seconds and not os.path.exists(a.stop):
        try:
            c, _ = ls.accept()
            held.append(c)
        except socket.timeout:
            pass
        except OSError:
            time.sleep(0.1)
    for c in held:
        c.close()
    print(json.dumps({"mode": "sink", "held": len(held)}))


def client(a, port, request, good):
    lat, ok, fail = [], 0, 0
    errors = {}
    served_seconds = set()
    start = time.monotonic()
    while time.monotonic() - start < a.seconds and ok + fail < a.max:
        t0 = time.monotonic()
        try:
            with socket.create_connection((SERVER, port), timeout=1) as c:
                c.settimeout(1)
                c.sendall(request)
                data = b""
                while not good(data):
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            if good(data):
                ok += 1
                lat.append(time.monotonic() - t0)
                served_seconds.add(int(time.monotonic() - start))
            else:
                fail += 1
                errors["bad reply"] = errors.get("bad reply", 0) + 1
        except OSError as e:
            fail += 1
            k = type(e).__name__
            errors[k] = errors.get(k, 0) + 1
            # A refused or timed-out connect: do not spin.
            time.sleep(0.05)
    seconds = max(1, math.ceil(time.monotonic() - start))
    lat.sort()
    pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
    print(json.dumps({"mode": a.mode, "ok": ok, "fail": fail,
                      "success": round(ok / max(ok + fail, 1), 4),
                      # Share of the run's seconds in which a request succeeded.
                      "served_seconds": round(len(served_seconds) / seconds, 3),
                      "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
                      "errors": errors}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["flood", "slow", "hold", "sink", "http", "mc"])
    p.add_argument("iface", nargs="?")
    p.add_argument("src_mac", nargs="?")
    p.add_argument("dst_mac", nargs="?")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--http", type=int, default=0)
    p.add_argument("--memcache", type=int, default=0)
    p.add_argument("--interval", type=float, default=3)
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--ready", default="/dev/null")
    p.add_argument("--stop", default="/nonexistent")
    p.add_argument("--max", type=int, default=100000)
    a = p.parse_args()
    if a.mode == "flood":
        flood(a)
    elif a.mode == "slow":
        slow(a)
    elif a.mode == "hold":
        hold(a)
    elif a.mode == "sink":
        sink(a)
    elif a.mode == "http":
        req = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nConnection: close\r\n\r\n"

        def good(d):
            # deathstar.py closes after Connection: close; a whole reply has its head.
            return d.startswith(b"HTTP/1.1 200") or d.startswith(b"HTTP/1.0 200")

        client(a, 80, req, good)
    else:
        client(a, 11211, b"get awing-coord\r\n", lambda d: d.endswith(b"END\r\n"))


if __name__ == "__main__":
    sys.exit(main())
