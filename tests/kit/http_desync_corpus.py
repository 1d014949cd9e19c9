"""The request shapes a public HTTP desync corpus rates "Acceptable" (tier
Acceptable: deviations from the RFC that bring no desync risk): the 15 cases
of aws/http-desync-guardian's tests/acceptable.yaml (9),
tests/bad-header-characters.yaml (4) and tests/uri-specific-test-cases.yaml
(2). The corpus gives method, target, version and headers; a Host header is
added to HTTP/1.x shapes (the corpus rates headers, not routing; nginx
answers 400 to HTTP/1.1 without Host) and a body where Content-Length or
Transfer-Encoding announces one. Each shape goes on its own connection:
prints "name first-line-of-answer" per shape.
usage: http_desync_corpus.py HOST PORT"""
import socket
import sys

HOST, PORT = sys.argv[1], int(sys.argv[2])
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
SHAPES = {
    # acceptable.yaml
    "dg-space-before-colon": b"PUT /foo/bar HTTP/1.1\r\nHost: a\r\nx-my-custom-header : some value\r\n"
    b"x-my-second-custom-header: some value\r\n\r\n",
    "dg-space-before-colon-te": b"PUT /foo/bar HTTP/1.1\r\nHost: a\r\nx-my-custom-header : some value\r\n" + CHUNKED,
    "dg-ctl-name-start-te": b"PUT /foo/bar HTTP/1.1\r\nHost: a\r\n\x01x-my-custom-header: some value\r\n" + CHUNKED,
    "dg-space-before-colon-cl": b"PUT /foo/bar HTTP/1.1\r\nHost: a\r\nx-my-custom-header : some value\r\n"
    b"Content-Length: 10000\r\n\r\n" + b"x" * 10000,
    "dg-get-cl0": b"GET /foo/bar HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "dg-head-cl0": b"HEAD /foo/bar HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "dg-http09-version": b"GET /foo/bar HTTP/0.9\r\nX-My-Header: some value\r\n\r\n",
    "dg-http09-simple": b"GET /foo/bar\r\n",
    "dg-http12": b"GET /foo/bar HTTP/1.2\r\nHost: a\r\nX-My-Header: some value\r\n\r\n",
    # bad-header-characters.yaml
    "dg-ctl-name-end-te": b"POST /foo/bar HTTP/1.1\r\nHost: a\r\nSome-Custom-Header\x01: Non-Rfc Compliant\r\n" + CHUNKED,
    "dg-ctl-name-start-post": b"POST /foo/bar HTTP/1.1\r\nHost: a\r\n\x01Some-Custom-Header: Non-Rfc Compliant\r\n" + CHUNKED,
    "dg-ctl-value-start": b"POST /foo/bar HTTP/1.1\r\nHost: a\r\nSome-Custom-Header: \x01Non-Rfc Compliant\r\n" + CHUNKED,
    "dg-ctl-value-end": b"POST /foo/bar HTTP/1.1\r\nHost: a\r\nSome-Custom-Header: Non-Rfc Compliant\x01\r\n" + CHUNKED,
    # uri-specific-test-cases.yaml
    "dg-space-after-version": b"GET /endpoint_a HTTP/1.1 \r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
    "dg-spaces-in-target": b"GET /endpoint_a?param=not escaped spaces HTTP/1.1\r\nHost: a\r\n"
    b"X-Forwarded-For: 1.1.1.1\r\n\r\n",
}
for k, v in SHAPES.items():
    s = socket.create_connection((HOST, PORT), timeout=3)
    s.sendall(v)
    try:
        r = s.recv(200).split(b"\n")[0].rstrip(b"\r") or b"<closed>"
    except OSError as e:
        r = type(e).__name__.encode()
    print(k, r.decode(errors="replace"))
    s.close()
