"""One memcached conversation per step list, as a client test suite would
have it: each step's request, then `mn` as a sentinel, on one connection.
Prints one JSON object: step name -> reply (raw, latin-1) for every step.
Run against memcached directly and through the enforcer; the test compares.

usage: mc_session.py HOST PORT
"""
import json
import re
import re
import socket
import sys

HOST, PORT = sys.argv[1], int(sys.argv[2])
LONG = "k" * 251

# (name, request bytes). Every text command of memcached 1.6's protocol.txt
# and the error classes clients meet; each error is followed by a request
# that works, on the same connection.
STEPS = [
    ("flush", b"flush_all\r\n"),
    ("set", b"set k 0 0 5\r\nhello\r\n"),
    ("unknown", b"bogus k\r\n"),
    ("unknown-then-get", b"get k\r\n"),
    ("blank", b"\r\n"),
    ("blank-then-get", b"get k\r\n"),
    ("negative-length", b"set k 0 0 -1\r\n"),
    ("bad-length", b"set k 0 0 x\r\n"),
    ("bad-length-then-get", b"get k\r\n"),
    ("verbosity-invalid", b"verbosity invalid\r\n"),
    ("cas-missing", b"cas k 0 0 1\r\nx\r\n"),
    ("cas-bad", b"cas k 0 0 1 abc\r\nx\r\n"),
    ("cas-bad-then-get", b"get k\r\n"),
    ("long-key-set", b"set " + LONG.encode() + b" 0 0 1\r\nx\r\n"),
    ("long-key-get", b"get " + LONG.encode() + b"\r\n"),
    ("long-key-then-get", b"get k\r\n"),
    ("bad-data-chunk", b"set k 0 0 1\r\nxyz\r\n"),
    ("too-large", b"set big 0 0 2000000\r\n" + b"v" * 2000000 + b"\r\n"),
    ("too-large-then-get", b"get k\r\n"),
    ("binary-key", b"set \x10\x90key 0 0 2\r\nhi\r\n"),
    ("binary-key-get", b"get \x10\x90key\r\n"),
    ("tab-key", b"get a\tb\r\n"),
    ("upper-case", b"GET k\r\n"),
    ("delete-bad", b"delete k x\r\n"),
    ("incr-bad", b"incr k -1\r\n"),
    ("noreply-error", b"set k 0 0 noreply\r\n"),
    ("noreply-error-then-get", b"get k\r\n"),
    # Every group, once.
    ("get", b"get k\r\n"),
    ("gets", b"gets k\r\n"),
    ("bget", b"bget k\r\n"),
    ("gat", b"gat 100 k\r\n"),
    ("gats", b"gats 100 k\r\n"),
    ("add", b"add n 0 0 1\r\n5\r\n"),
    ("replace", b"replace n 0 0 1\r\n6\r\n"),
    ("append", b"append k 0 0 1\r\n!\r\n"),
    ("prepend", b"prepend k 0 0 1\r\n>\r\n"),
    ("cas", b"cas k 0 0 1 1\r\nx\r\n"),
    ("incr", b"incr n 10\r\n"),
    ("decr", b"decr n 3\r\n"),
    ("touch", b"touch k 100\r\n"),
    ("delete", b"delete n\r\n"),
    ("set-noreply", b"set q 0 0 1 noreply\r\nq\r\n"),
    ("mg", b"mg k v f t\r\n"),
    ("ms", b"ms m 2 T0\r\nhi\r\n"),
    ("ms-add", b"ms m 2 ME\r\nhi\r\n"),
    ("ms-bad-mode", b"ms m 2 MX\r\nhi\r\n"),
    ("ma", b"ma n\r\n"),
    ("md", b"md m q\r\n"),
    ("me", b"me k\r\n"),
    ("mn", b"mn\r\n"),
    ("stats", b"stats\r\n"),
    ("stats-settings", b"stats settings\r\n"),
    ("stats-items", b"stats items\r\n"),
    ("stats-slabs", b"stats slabs\r\n"),
    ("stats-sizes", b"stats sizes\r\n"),
    ("stats-conns", b"stats conns\r\n"),
    ("stats-detail-on", b"stats detail on\r\n"),
    ("stats-detail-dump", b"stats detail dump\r\n"),
    ("stats-detail-off", b"stats detail off\r\n"),
    ("stats-cachedump", b"stats cachedump 1 10\r\n"),
    ("stats-extstore", b"stats extstore\r\n"),
    ("stats-reset", b"stats reset\r\n"),
    ("version", b"version\r\n"),
    ("verbosity", b"verbosity 0\r\n"),
    ("slabs-automove", b"slabs automove 1\r\n"),
    ("slabs-reassign", b"slabs reassign 1 2\r\n"),
    ("lru", b"lru mode segmented\r\n"),
    ("lru-crawler-metadump", b"lru_crawler metadump all\r\n"),
    ("lru-crawler", b"lru_crawler crawl all\r\n"),
    ("cache-memlimit", b"cache_memlimit 64\r\n"),
    ("extstore", b"extstore compact_gas 10\r\n"),
    ("misbehave", b"misbehave\r\n"),
    ("debugtime", b"debugtime 1\r\n"),
    ("refresh-certs", b"refresh_certs\r\n"),
    ("shutdown", b"shutdown\r\n"),
    ("flush-noreply", b"flush_all noreply\r\n"),
    ("last", b"get k\r\n"),
]


def recv_until(s, end, buf=b""):
    while not buf.endswith(end):
        d = s.recv(1 << 20)
        if not d:
            return buf + b"<closed>"
        buf += d
    return buf


def session():
    out = {}
    s = socket.create_connection((HOST, PORT), timeout=5)
    for name, req in STEPS:
        if name == "lru-crawler-metadump":
            # memcached refuses other commands pipelined behind a metadump.
            s.sendall(req)
            buf = b""
            while not (buf.endswith(b"END\r\n") or re.match(rb"[A-Z]+[ :].*\r\n$", buf)):
                d = s.recv(1 << 20)
                if not d:
                    break
                buf += d
            out[name] = buf
            continue
        s.sendall(req + b"mn\r\n")
        # As many MN as `mn` were sent (the `mn` step sends two).
        need = req.count(b"mn\r\n") + 1
        buf = recv_until(s, b"MN\r\n")
        while buf.count(b"MN\r\n") < need and not buf.endswith(b"<closed>"):
            more = s.recv(1 << 20)
            buf = recv_until(s, b"MN\r\n", buf + more) if more else buf + b"<closed>"
        out[name] = buf[: -len(b"MN\r\n")]
    s.close()
    # Lines memcached ends the connection on, each on its own connection.
    for name, req in [
        ("quit", b"quit\r\n"),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]:
        s = socket.create_connection((HOST, PORT), timeout=5)
        s.sendall(req)
        try:
            out[name] = recv_until(s, b"\xff\xff")
        except ConnectionResetError:
            out[name] = b"<closed>"
        s.close()
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.sendall(b"watch\r\n")
    out["watch"] = recv_until(s, b"\r\n")
    s.close()
    return out


print(json.dumps({k: v.decode("latin-1") for k, v in session().items()}))
