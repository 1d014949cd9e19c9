"""Request shapes RFC 9110/9112 allow (and a few the enforcer refuses),
each on its own connection: prints "name status-line" per shape.
usage: http_shapes.py HOST PORT"""
import socket
import sys

HOST, PORT = sys.argv[1], int(sys.argv[2])
SHAPES = {
 "get-cl0": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
 "http12": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
 "obs-text-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n",
 "tab-ows": b"GET / HTTP/1.1\r\nHost: a\r\nX-A:\tv\t\r\n\r\n",
 "empty-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n\r\n",
 "te-gzip-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
 "cl-leading-zeros": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nhello",
 "chunk-ext": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
 "trailer": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
 "tchar-name": b"GET / HTTP/1.1\r\nHost: a\r\nX-!#$%&'*+.^_`|~: v\r\n\r\n",
 "ipv6-host": b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
 "absolute-form": b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
 "options-star": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
 "leading-crlf": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
 "http10-no-host": b"GET / HTTP/1.0\r\n\r\n",
 "custom-method": b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
 "query-chars": b"GET /a?b=/c?d&e=%20 HTTP/1.1\r\nHost: a\r\n\r\n",
 "chunk-upper-hex": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000A\r\n0123456789\r\n0\r\n\r\n",
 "cl-list-same": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
 "head-cl0": b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
 "delete-cl0": b"DELETE / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
 "get-body": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
 "host-empty-http10": b"GET / HTTP/1.0\r\nHost:\r\n\r\n",
 "userinfo-less-abs-https": b"GET https://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
 "host-port": b"GET / HTTP/1.1\r\nHost: a:8080\r\n\r\n",
 "value-internal-spaces": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a  b\r\n\r\n",
 "space-in-value-trailing": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: v   \r\n\r\n",
 "many-headers-130": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(130)) + b"\r\n",
}
for k, v in SHAPES.items():
    s = socket.create_connection((HOST, PORT), timeout=3); s.sendall(v)
    try:
        r = s.recv(200).split(b"\r\n")[0] or b"<closed>"
    except OSError as e:
        r = type(e).__name__.encode()
    print(k, r.decode(errors="replace"))
    s.close()
