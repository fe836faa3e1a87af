#!/usr/bin/env python3
"""Host side of the vm-test "vsock-faults" scenario, on the Unix socket where vhost-device-vsock delivers the
guest's connections to CID 2 PORT. Written from docs/PROTOCOL.md with the struct module only.

    storm.py SOCKET ROUNDS            ROUNDS times: accept, negotiate, send half a heartbeat, close
    storm.py SOCKET --stall SECONDS   accept, negotiate, heartbeat, send 10 bytes of a header, wait for EOF

Prints "done rounds=N" or "done heartbeats=N dropped_after_s=X"; exits 1 on a wrong answer or a time-out.
"""
import os
import socket
import struct
import sys
import time

NEGOTIATE, HEARTBEAT = 0, 1
TRANSACTION_REQUEST = 0x01 | 0x02


def message(msgtype, tid, body, version=(3, 0)):
    ic = struct.pack("<HHHHHHIBBH", 3, 0, msgtype, version[0], version[1], len(body), 0, tid,
                     TRANSACTION_REQUEST, 0)
    return struct.pack("<II", 1, 20 + len(body)) + ic + body  # pipe packet type DATA


def negotiate():
    body = struct.pack("<HHI", 1, 1, 0) + struct.pack("<HH", 3, 0) + struct.pack("<HH", 3, 0)
    return message(NEGOTIATE, 0, body, (1, 0))


def heartbeat(seq):
    return message(HEARTBEAT, seq % 256, struct.pack("<QII", seq, 0, 0))


def read_message(conn):
    """One whole message (header fields and body), or None at EOF."""
    data = b""
    while len(data) < 28:
        chunk = conn.recv(28 - len(data))
        if not chunk:
            return None
        data += chunk
    _, msgsize = struct.unpack_from("<II", data, 0)
    body_len = struct.unpack_from("<H", data, 18)[0]
    if msgsize != 20 + body_len:
        raise SystemExit("storm: bad framing from the agent: msgsize %d icmsgsize %d" % (msgsize, body_len))
    body = b""
    while len(body) < body_len:
        chunk = conn.recv(body_len - len(body))
        if not chunk:
            return None
        body += chunk
    status = struct.unpack_from("<I", data, 20)[0]
    return {"type": struct.unpack_from("<H", data, 12)[0], "status": status, "tid": data[24], "body": body}


def expect_ok(conn, what):
    answer = read_message(conn)
    if answer is None or answer["status"] != 0:
        raise SystemExit("storm: %s: %r" % (what, answer))
    return answer


def serve(path):
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(30)
    return listener


def main():
    path = sys.argv[1]
    listener = serve(path)
    try:
        if sys.argv[2] == "--stall":
            limit = float(sys.argv[3])
            conn, _ = listener.accept()
            conn.settimeout(limit + 10)
            conn.sendall(negotiate())
            expect_ok(conn, "negotiate")
            conn.sendall(heartbeat(1))
            answer = expect_ok(conn, "heartbeat")
            if struct.unpack_from("<Q", answer["body"], 0)[0] != 2:
                raise SystemExit("storm: heartbeat answered with the wrong seq_num")
            conn.sendall(heartbeat(2)[:10])
            started = time.monotonic()
            if conn.recv(1) != b"":
                raise SystemExit("storm: the agent answered half a header")
            print("done heartbeats=1 dropped_after_s=%.2f" % (time.monotonic() - started), flush=True)
            return
        rounds = int(sys.argv[2])
        half = heartbeat(7)[:22]
        for _ in range(rounds):
            conn, _ = listener.accept()
            conn.settimeout(10)
            conn.sendall(negotiate())
            expect_ok(conn, "negotiate")
            conn.sendall(half)
            conn.close()
        print("done rounds=%d" % rounds, flush=True)
    finally:
        listener.close()
        os.unlink(path)


if __name__ == "__main__":
    main()
