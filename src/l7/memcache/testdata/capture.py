# Captures the transcripts used by l7::memcache::tests::real_server_transcripts:
# memcached -u nobody -l 127.0.0.1 -p 21911 -U 0 -m 16 & python3 capture.py
# (memcached 1.6.18; reply bytes vary in stats values only)
import socket, struct, time, sys
def xchg(data, port=21911):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(data)
    s.settimeout(0.5)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b: break
            out += b
    except socket.timeout:
        pass
    s.close()
    return out

text = (b"set awing-coord 0 1200 16\r\n4309.432,918.980\r\n"
 b"get awing-coord xwing-coord\r\n"
 b"gets awing-coord\r\n"
 b"get nothing\r\n"
 b"add awing-coord 0 0 1\r\nx\r\n"
 b"append awing-coord 0 0 2\r\n;1\r\n"
 b"incr counter 1\r\n"
 b"set counter 0 0 1 \r\n5\r\n"
 b"incr counter 10\r\n"
 b"decr counter 3\r\n"
 b"touch awing-coord 100\r\n"
 b"gat 100 awing-coord nothing\r\n"
 b"gats 100 awing-coord\r\n"
 b"delete counter\r\n"
 b"delete counter noreply\r\n"
 b"set quiet 0 0 1 noreply\r\nq\r\n"
 b"stats\r\n"
 b"stats slabs\r\n"
 b"stats items\r\n"
 b"version\r\n"
 b"verbosity 1\r\n"
 b"mg awing-coord v f t\r\n"
 b"mg missing v\r\n"
 b"mg missing v q\r\n"
 b"ms newkey 2 T0\r\nhi\r\n"
 b"ms newkey 2 MA\r\nho\r\n"
 b"mg newkey v k s c\r\n"
 b"md newkey q\r\n"
 b"ma counter\r\n"
 b"mn\r\n"
 b"me awing-coord\r\n"
 b"cas awing-coord 0 0 1 999\r\nz\r\n"
 b"flush_all\r\n"
 b"get awing-coord\r\n")
open("text_req.bin","wb").write(text)
open("text_rep.bin","wb").write(xchg(text))

def req(op, opaque, extras=b"", key=b"", value=b""):
    return struct.pack(">BBHBBHIIQ", 0x80, op, len(key), len(extras), 0, 0, len(extras)+len(key)+len(value), opaque, 0) + extras + key + value
binr = b"".join([
  req(0x01, 1, struct.pack(">II", 0, 1200), b"awing-coord", b"4309.432,918.980"),
  req(0x00, 2, key=b"awing-coord"),
  req(0x00, 3, key=b"nothing"),
  req(0x09, 4, key=b"nothing"),      # getq miss: no reply
  req(0x09, 5, key=b"awing-coord"),  # getq hit: reply
  req(0x0c, 6, key=b"awing-coord"),
  req(0x0d, 7, key=b"awing-coord"),
  req(0x11, 8, struct.pack(">II", 0, 0), b"q", b"v"),  # setq: no reply
  req(0x0e, 9, key=b"awing-coord", value=b";x"),
  req(0x05, 10, struct.pack(">QQI", 1, 0, 0), b"ctr"),
  req(0x1c, 11, struct.pack(">I", 100), b"awing-coord"),
  req(0x1d, 12, struct.pack(">I", 100), b"awing-coord"),
  req(0x23, 13, struct.pack(">I", 100), b"awing-coord"),
  req(0x04, 14, key=b"ctr"),
  req(0x10, 15),
  req(0x0b, 16),
  # verbosity omitted: memcached 1.6.18 desyncs on it
  req(0x0a, 18),
  req(0x08, 19),
])
open("bin_req.bin","wb").write(binr)
open("bin_rep.bin","wb").write(xchg(binr))
