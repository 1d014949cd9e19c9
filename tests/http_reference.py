#!/usr/bin/env python3
"""Reference HTTP/1.1 request parsers for tests/http_differential.rs.

stdin: a JSON list of hex-encoded byte strings, each the start of a client
stream. stdout: a JSON list, per input an object with one entry per parser
("h11", "llhttp" through httptools), each one of
  {"r": "ok", "end": N, "method": M, "target": T}   first request ends at byte N
  {"r": "incomplete"}                              needs more bytes
  {"r": "upgrade", "end": N}                       the head ends at N, the rest
                                                   goes to a tunnel (llhttp)
  {"r": "error", "why": ...}                       the parser refuses
"""

import json
import sys

import h11
import httptools


def with_h11(data):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    method = target = None
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                return {"r": "incomplete"}
            if ev is h11.PAUSED:
                return {"r": "error", "why": "paused before end of message"}
            if isinstance(ev, h11.Request):
                method, target = ev.method.decode("latin-1"), ev.target.decode("latin-1")
            elif isinstance(ev, h11.EndOfMessage):
                rest = conn.trailing_data[0]
                return {"r": "ok", "end": len(data) - len(rest), "method": method, "target": target}
    except h11.RemoteProtocolError as e:
        return {"r": "error", "why": str(e)[:80]}


class _Cb:
    def __init__(self):
        self.url = b""
        self.done = False

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        self.done = True


def with_llhttp(data):
    cb = _Cb()
    p = httptools.HttpRequestParser(cb)
    # One byte at a time, so the end of the first message is the byte that
    # completed it (a whole feed would run on into the next request).
    for i in range(len(data)):
        try:
            p.feed_data(data[i:i + 1])
        except httptools.HttpParserUpgrade:
            return {"r": "upgrade", "end": i + 1}
        except httptools.HttpParserError as e:
            return {"r": "error", "why": str(e)[:80]}
        if cb.done:
            return {
                "r": "ok",
                "end": i + 1,
                "method": p.get_method().decode("latin-1"),
                "target": cb.url.decode("latin-1"),
            }
    return {"r": "incomplete"}


def main():
    shapes = [bytes.fromhex(h) for h in json.load(sys.stdin)]
    json.dump([{"h11": with_h11(s), "llhttp": with_llhttp(s)} for s in shapes], sys.stdout)


if __name__ == "__main__":
    main()
