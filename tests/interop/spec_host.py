#!/usr/bin/env python3
"""Independent host-side interop test for hvagent, written from docs/PROTOCOL.md alone.

Usage: python3 tests/interop/spec_host.py PATH_TO_HVAGENT

Starts the agent itself (listen mode and connect mode, Unix sockets only), plays the host side of the
heartbeat integration service and checks the agent's answers against the document. Prints one line per
check ("PASS name: detail" / "FAIL name: detail") and finally "interop: N passed, M failed"; exits 1 if any
check failed. Standard library only; never creates AF_VSOCK sockets.
"""

import errno
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

# ---------------------------------------------------------------------------------------------------------
# Protocol constants (PROTOCOL.md section 3)

NEGOTIATE = 0
HEARTBEAT = 1

F_TRANSACTION = 0x01
F_REQUEST = 0x02
F_RESPONSE = 0x04
REQ_FLAGS = F_TRANSACTION | F_REQUEST  # 0x03
REPLY_FLAGS = F_TRANSACTION | F_RESPONSE  # 0x05

HV_S_OK = 0x00000000
HV_E_FAIL = 0x80004005
HV_INVALIDARG = 0x80070057

STATUS_NAMES = {HV_S_OK: "HV_S_OK", HV_E_FAIL: "HV_E_FAIL", HV_INVALIDARG: "HV_INVALIDARG"}

PIPE_DATA = 1  # the pipe header's packet type (2.1): sent as 1; 0 accepted on receipt, anything else refused

MAX_MSG = 16384  # whole message (2.2)
MAX_PIPE_MSGSIZE = MAX_MSG - 8  # 16376
MAX_BODY = MAX_MSG - 28  # 16356

# 8-byte pipe header + 20-byte IC header, little-endian, packed (2.1)
HDR = struct.Struct("<IIHHHHHHIBBH")
assert HDR.size == 28

MASK64 = (1 << 64) - 1

TIMEOUT = 5.0  # default for any single wait


def sname(status):
    return STATUS_NAMES.get(status, "0x%08x" % status)


# ---------------------------------------------------------------------------------------------------------
# Messages


class Msg:
    __slots__ = ("pipe_type", "msgsize", "frame", "type", "msgver", "icmsgsize", "status", "tid", "flags",
                 "reserved", "body", "raw")

    def __repr__(self):
        return ("Msg(type=%d frame=%d.%d msgver=%d.%d status=%s tid=%d flags=0x%02x pipe_type=%d rsvd=%d "
                "body=%s)" % (self.type, self.frame[0], self.frame[1], self.msgver[0], self.msgver[1],
                              sname(self.status), self.tid, self.flags, self.pipe_type, self.reserved,
                              self.body[:48].hex() + ("..." if len(self.body) > 48 else "")))


def parse_header(b):
    m = Msg()
    (m.pipe_type, m.msgsize, fmaj, fmin, m.type, vmaj, vmin, m.icmsgsize, m.status, m.tid, m.flags,
     m.reserved) = HDR.unpack_from(b, 0)
    m.frame = (fmaj, fmin)
    m.msgver = (vmaj, vmin)
    return m


def build(msgtype, body=b"", frame=(1, 0), msgver=(1, 0), tid=0, flags=REQ_FLAGS, status=0, pipe_type=PIPE_DATA,
          reserved=0, msgsize=None, icmsgsize=None):
    """Build one message; msgsize/icmsgsize may be overridden to make deliberately bad framing."""
    if icmsgsize is None:
        icmsgsize = len(body)
    if msgsize is None:
        msgsize = 20 + icmsgsize
    hdr = HDR.pack(pipe_type, msgsize, frame[0], frame[1], msgtype, msgver[0], msgver[1], icmsgsize, status,
                   tid, flags, reserved)
    return hdr + body


def negotiate_body(frameworks, messages, reserved=0, count_f=None, count_m=None, trailer=b""):
    f = len(frameworks) if count_f is None else count_f
    m = len(messages) if count_m is None else count_m
    b = struct.pack("<HHI", f, m, reserved)
    for (ma, mi) in list(frameworks) + list(messages):
        b += struct.pack("<HH", ma, mi)
    return b + trailer


def hb_body(seq, app_state=0, reserved=b"\0\0\0\0"):
    return struct.pack("<QI", seq & MASK64, app_state) + reserved


def expected_hb_reply_body(req_body):
    """6.2: seq+1 wrapping; bytes 8..12 = 0 (UNKNOWN) when body >= 12; everything else copied."""
    seq = struct.unpack_from("<Q", req_body, 0)[0]
    out = bytearray(req_body)
    struct.pack_into("<Q", out, 0, (seq + 1) & MASK64)
    if len(req_body) >= 12:
        out[8:12] = b"\0\0\0\0"
    return bytes(out)


class Check(Exception):
    """A failed assertion with a human-readable detail."""


def expect(cond, detail):
    if not cond:
        raise Check(detail)


def verify_reply(req_raw, rep, status, body=None):
    """Check a reply header against 4.6 for the request bytes req_raw; optionally the exact body."""
    req = parse_header(req_raw)
    req_body = req_raw[28:]
    errs = []
    if rep.pipe_type != PIPE_DATA:
        errs.append("pipe packet type %d != 1 (DATA, 2.1)" % rep.pipe_type)
    if rep.msgsize != 20 + len(rep.body) or rep.icmsgsize != len(rep.body):
        errs.append("size fields msgsize=%d icmsgsize=%d for a %d-byte body" % (rep.msgsize, rep.icmsgsize,
                                                                                len(rep.body)))
    if rep.frame != req.frame:
        errs.append("icverframe %s != request's %s" % (rep.frame, req.frame))
    if rep.msgver != req.msgver:
        errs.append("icvermsg %s != request's %s" % (rep.msgver, req.msgver))
    if rep.type != req.type:
        errs.append("icmsgtype %d != request's %d" % (rep.type, req.type))
    if rep.status != status:
        errs.append("status %s != %s" % (sname(rep.status), sname(status)))
    if rep.tid != req.tid:
        errs.append("transaction id %d != request's %d" % (rep.tid, req.tid))
    if rep.flags != REPLY_FLAGS:
        errs.append("icflags 0x%02x != 0x05" % rep.flags)
    if rep.reserved != 0:
        errs.append("reserved %d != 0" % rep.reserved)
    if body is not None and rep.body != body:
        errs.append("body %s != expected %s" % (rep.body[:64].hex(), body[:64].hex()))
    if status == HV_E_FAIL or status == HV_INVALIDARG:
        if body is None and rep.body != req_body:
            errs.append("error reply body is not the request body echoed")
    if errs:
        raise Check("; ".join(errs) + " (reply %r)" % rep)


# ---------------------------------------------------------------------------------------------------------
# A connection with incremental stream framing (1.6, 2.2)


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock, name="conn"):
        self.sock = sock
        self.name = name
        self.buf = bytearray()
        self.eof = False

    @classmethod
    def dial(cls, path, timeout=TIMEOUT, name="conn"):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                s.connect(path)
                return cls(s, name)
            except OSError as e:
                s.close()
                last = e
            owner = Agent.by_path.get(path)
            if owner is not None and not owner.alive():
                raise Check("cannot connect to %s: the agent has exited with code %s (log: %s)"
                            % (path, owner.proc.returncode, owner.log_tail()))
            if time.monotonic() >= deadline:
                raise Check("could not connect to %s within %.1fs: %s" % (path, timeout, last))
            time.sleep(0.02)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data, timeout=TIMEOUT):
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def _fill(self, deadline):
        """Read whatever is available into the buffer, waiting at most until deadline. False on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not data:
            self.eof = True
            raise Closed("EOF")
        self.buf += data
        return True

    def _take_msg(self):
        if len(self.buf) < 28:
            return None
        m = parse_header(self.buf)
        # The agent promises to obey the length rules in everything it sends (2.2).
        if m.msgsize > MAX_PIPE_MSGSIZE:
            raise Check("agent sent msgsize %d > %d" % (m.msgsize, MAX_PIPE_MSGSIZE))
        if m.msgsize != 20 + m.icmsgsize:
            raise Check("agent sent msgsize %d != 20 + icmsgsize %d" % (m.msgsize, m.icmsgsize))
        total = 8 + m.msgsize
        if len(self.buf) < total:
            return None
        m.raw = bytes(self.buf[:total])
        m.body = m.raw[28:]
        del self.buf[:total]
        return m

    def recv_msg(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            m = self._take_msg()
            if m is not None:
                return m
            if not self._fill(deadline):
                raise Check("%s: no complete message within %.1fs (%d bytes buffered)" %
                            (self.name, timeout, len(self.buf)))

    def request(self, raw, timeout=TIMEOUT):
        self.send(raw, timeout)
        return self.recv_msg(timeout)

    def wait_closed(self, timeout=TIMEOUT):
        """Wait until the peer closes. Returns (how, stray_bytes): how is 'EOF', 'ECONNRESET' or None on
        timeout; stray_bytes is whatever arrived before that."""
        deadline = time.monotonic() + timeout
        got = bytes(self.buf)
        self.buf.clear()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, got
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None, got
            except ConnectionResetError:
                return "ECONNRESET", got
            if not data:
                return "EOF", got
            got += data

    def silent_for(self, seconds):
        """True if nothing arrives (and no EOF) for `seconds`."""
        r, _, _ = select.select([self.sock], [], [], seconds)
        return not r and not self.buf


def negotiate(conn, frameworks=((1, 0), (3, 0)), messages=((1, 0), (3, 0)), tid=0):
    """Negotiate as 9.3/9.4 says a host does; returns (reply, framework, message version)."""
    req = build(NEGOTIATE, negotiate_body(frameworks, messages), tid=tid)
    rep = conn.request(req)
    verify_reply(req, rep, HV_S_OK)
    expect(len(rep.body) == 16, "negotiate answer body is %d bytes, not 16" % len(rep.body))
    f, m, rsvd, fma, fmi, mma, mmi = struct.unpack("<HHIHHHH", rep.body)
    expect(f == 1 and m == 1, "negotiate counts %d/%d, expected 1/1" % (f, m))
    return rep, (fma, fmi), (mma, mmi)


def heartbeat(conn, seq, tid=1, frame=(3, 0), msgver=(3, 0), body=None):
    body = hb_body(seq) if body is None else body
    req = build(HEARTBEAT, body, frame=frame, msgver=msgver, tid=tid)
    rep = conn.request(req)
    verify_reply(req, rep, HV_S_OK, expected_hb_reply_body(body))
    return rep


# ---------------------------------------------------------------------------------------------------------
# Agent process management


class Agent:
    all = []
    by_path = {}  # listen-mode socket path -> Agent, so a dead agent fails a dial at once

    def __init__(self, exe, tmp, name, service_toml, listen_path=None):
        self.exe = exe
        self.name = name
        self.cfg = os.path.join(tmp, name + ".toml")
        self.log = os.path.join(tmp, name + ".log")
        with open(self.cfg, "w") as f:
            # Only the heartbeat: the other services enabled by default would dial the host over vsock (and
            # time sync would set the clock).
            f.write('log_level = "debug"\n[heartbeat]\n' + service_toml + "\n"
                    "[timesync]\nenabled = false\n[shutdown]\nenabled = false\n[guestinfo]\nenabled = false\n")
        self.proc = None
        if listen_path is not None:
            Agent.by_path[listen_path] = self

    def start(self):
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen([self.exe, "--config", self.cfg], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf)
        Agent.all.append(self)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM, wait; SIGKILL if it does not exit. Returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, n=5):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""


def kill_all_agents():
    for a in Agent.all:
        a.kill()


# ---------------------------------------------------------------------------------------------------------
# Result bookkeeping

results = []


def record(name, ok, detail):
    results.append((name, ok))
    print("%s %s: %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)


def run(name, fn, *args):
    try:
        detail = fn(*args)
        record(name, True, detail or "ok")
    except Check as e:
        record(name, False, str(e))
    except Closed as e:
        record(name, False, "connection closed unexpectedly (%s)" % e)
    except Exception as e:  # any other surprise is a failure of this check, not of the whole run
        record(name, False, "%s: %s" % (type(e).__name__, e))


# ---------------------------------------------------------------------------------------------------------
# The checks

DOC_NEGOTIATE_REQ = bytes.fromhex(
    "01000000 2c000000 01000000 0000 01000000 1800 00000000 00 03 0000 0200020000000000 "
    "0100000003000000 0100000003000000".replace(" ", ""))
DOC_NEGOTIATE_ANS = bytes.fromhex(
    "01000000 24000000 01000000 0000 01000000 1000 00000000 00 05 0000 0100010000000000 03000000 03000000"
    .replace(" ", ""))
DOC_HB_REQ = bytes.fromhex(
    "01000000 24000000 03000000 0100 03000000 1000 00000000 01 03 0000 ff00000000000000 00000000 00000000"
    .replace(" ", ""))
DOC_HB_ANS = bytes.fromhex(
    "01000000 24000000 03000000 0100 03000000 1000 00000000 01 05 0000 0001000000000000 00000000 00000000"
    .replace(" ", ""))


class Ctx:
    pass


def c_negotiate_doc_example(ctx):
    """1. The host's standard offer (frameworks 1.0, 3.0; messages 1.0, 3.0; tid 0; flags 0x03)."""
    req = build(NEGOTIATE, negotiate_body([(1, 0), (3, 0)], [(1, 0), (3, 0)]))
    expect(req == DOC_NEGOTIATE_REQ, "our encoder disagrees with the 6.3 example request")
    c = Conn.dial(ctx.listen_path, name="neg")
    try:
        expect(c.silent_for(0.3), "agent sent something before the host's NEGOTIATE (4.1)")
        rep = c.request(req)
        verify_reply(req, rep, HV_S_OK)
        f, m, rsvd, fma, fmi, mma, mmi = struct.unpack("<HHIHHHH", rep.body)
        expect((f, m, rsvd) == (1, 1, 0), "counts/reserved %d/%d/%d, expected 1/1/0" % (f, m, rsvd))
        expect((fma, fmi) == (3, 0), "chosen framework %d.%d, expected 3.0" % (fma, fmi))
        expect((mma, mmi) == (3, 0), "chosen heartbeat version %d.%d, expected 3.0" % (mma, mmi))
        expect(rep.raw == DOC_NEGOTIATE_ANS, "answer %s differs from the 6.3 example %s"
               % (rep.raw.hex(), DOC_NEGOTIATE_ANS.hex()))
        # The heartbeat of the worked example, byte for byte.
        rep2 = c.request(DOC_HB_REQ)
        expect(rep2.raw == DOC_HB_ANS, "heartbeat answer %s differs from the 6.3 example %s"
               % (rep2.raw.hex(), DOC_HB_ANS.hex()))
    finally:
        c.close()
    return ("44-byte answer: flags 0x05, tid 0, HV_S_OK, msgsize 36/icmsgsize 16, counts 1/1, framework 3.0, "
            "heartbeat 3.0; byte-identical to the 6.3 example, and so is the example heartbeat")


def c_negotiate_choices(ctx):
    """4.3: the agent walks its own preference list; order of the host's lists does not matter."""
    cases = [
        # frameworks, messages, tid, expected (framework, message)
        ([(1, 0)], [(1, 0)], 0, ((1, 0), (1, 0))),
        ([(3, 0), (1, 0)], [(3, 0), (1, 0)], 0, ((3, 0), (3, 0))),
        ([(2, 0), (1, 0), (9, 9)], [(0, 0), (3, 0), (3, 1)], 0, ((1, 0), (3, 0))),
        ([(3, 0)], [(1, 0)], 77, ((3, 0), (1, 0))),  # non-zero transaction id is copied (4.1)
        ([(1, 0), (3, 0)], [(1, 0), (3, 0)] + [(7, i) for i in range(98)], 200, ((3, 0), (3, 0))),  # M = 100
    ]
    details = []
    for fw, mv, tid, want in cases:
        c = Conn.dial(ctx.listen_path, name="neg")
        try:
            rep, f, m = negotiate(c, fw, mv, tid=tid)
            expect((f, m) == want, "offer fw %s msg %s -> %s/%s, expected %s/%s" % (fw, mv[:4], f, m, *want))
            # A negotiated channel serves heartbeats.
            heartbeat(c, 1000 + tid, tid=tid ^ 0xff, frame=f, msgver=m)
            details.append("%d.%d/%d.%d" % (f + m))
        finally:
            c.close()
    # Bytes after the lists are ignored (4.2).
    c = Conn.dial(ctx.listen_path, name="neg")
    try:
        req = build(NEGOTIATE, negotiate_body([(1, 0), (3, 0)], [(3, 0)], trailer=b"\xaa" * 12))
        rep = c.request(req)
        verify_reply(req, rep, HV_S_OK, negotiate_body([(3, 0)], [(3, 0)]))
    finally:
        c.close()
    return "chosen " + ", ".join(details) + "; tid copied; M=100 accepted; trailing bytes after lists ignored"


def c_negotiate_no_common(ctx):
    """4.4: no common version -> HV_S_OK, 16 zero bytes; heartbeats refused; a later success heals."""
    zero16 = b"\0" * 16
    out = []
    for fw, mv in (([(2, 0)], [(1, 0), (3, 0)]),        # no common framework (the doc's example)
                   ([(1, 0), (3, 0)], [(3, 1), (2, 0)]),  # no common heartbeat version (exact match only)
                   ([], [(3, 0)]),                        # F = 0
                   ([(3, 0)], [])):                       # M = 0
        c = Conn.dial(ctx.listen_path, name="neg0")
        try:
            req = build(NEGOTIATE, negotiate_body(fw, mv))
            rep = c.request(req)
            verify_reply(req, rep, HV_S_OK, zero16)
            expect(len(rep.raw) == 44, "answer is %d bytes, expected 44" % len(rep.raw))
            # Un-negotiated: a heartbeat is refused with HV_E_FAIL, body echoed.
            hb = build(HEARTBEAT, hb_body(5), frame=(3, 0), msgver=(3, 0), tid=9)
            rep = c.request(hb)
            verify_reply(hb, rep, HV_E_FAIL, hb[28:])
            out.append("fw%s msg%s" % (fw, mv))
        finally:
            c.close()
    # 4.5: success, then no-common-version, leaves the channel un-negotiated; success again heals it.
    c = Conn.dial(ctx.listen_path, name="reneg")
    try:
        negotiate(c)
        heartbeat(c, 1)
        req = build(NEGOTIATE, negotiate_body([(2, 0)], [(3, 0)]))
        verify_reply(req, c.request(req), HV_S_OK, zero16)
        hb = build(HEARTBEAT, hb_body(2), frame=(3, 0), msgver=(3, 0), tid=3)
        verify_reply(hb, c.request(hb), HV_E_FAIL, hb[28:])
        negotiate(c, [(1, 0)], [(1, 0)])
        heartbeat(c, 3, frame=(1, 0), msgver=(1, 0))
    finally:
        c.close()
    return ("HV_S_OK with 16 zero bytes for %d offers; heartbeats then HV_E_FAIL; renegotiation replaces the "
            "result (4.5)" % len(out))


def c_negotiate_malformed(ctx):
    """4.2/5.3 step 2: malformed NEGOTIATE bodies -> HV_INVALIDARG, body echoed, state unchanged."""
    bad = [
        ("empty body", b""),
        ("4-byte body", struct.pack("<HH", 1, 1)),
        ("7-byte body", b"\x01\x00\x01\x00\x00\x00\x00"),
        ("F=101", negotiate_body([(3, 0)] * 101, [(3, 0)])),
        ("M=101", negotiate_body([(3, 0)], [(3, 0)] * 101)),
        ("lists do not fit", negotiate_body([(3, 0)], [(3, 0)], count_m=2)),
        ("counts with no lists", struct.pack("<HHI", 1, 1, 0)),
    ]
    c = Conn.dial(ctx.listen_path, name="badneg")
    try:
        # Before any negotiation: refused, and the channel stays un-negotiated.
        for label, body in bad:
            req = build(NEGOTIATE, body, tid=len(body) & 0xff)
            rep = c.request(req)
            try:
                verify_reply(req, rep, HV_INVALIDARG, body)
            except Check as e:
                raise Check("%s: %s" % (label, e))
        hb = build(HEARTBEAT, hb_body(1), frame=(3, 0), msgver=(3, 0), tid=4)
        verify_reply(hb, c.request(hb), HV_E_FAIL, hb[28:])
        # After a successful negotiation: refused, and the channel stays negotiated.
        negotiate(c)
        for label, body in bad:
            req = build(NEGOTIATE, body, tid=1)
            verify_reply(req, c.request(req), HV_INVALIDARG, body)
        heartbeat(c, 77)
    finally:
        c.close()
    return "%d malformed bodies answered HV_INVALIDARG with the body echoed; state unchanged both ways" % len(bad)


def c_heartbeats_10k(ctx):
    """2. 10,000 heartbeats on one connection, each answer checked; p50/p99 RTT."""
    c = Conn.dial(ctx.listen_path, name="hb10k")
    n = 10000
    rtts = []
    bad = 0
    first_err = None
    try:
        _, fv, mv = negotiate(c)
        seq = 0xFFFFFFFFFFFFFFFF - 5000  # crosses the u64 wrap half way through
        for i in range(n):
            tid = (i + 1) & 0xFF
            reserved = struct.pack("<I", i * 2654435761 & 0xFFFFFFFF)  # must be copied unchanged
            body = hb_body(seq, app_state=i % 4, reserved=reserved)
            req = build(HEARTBEAT, body, frame=fv, msgver=mv, tid=tid)
            t0 = time.perf_counter_ns()
            c.send(req)
            rep = c.recv_msg()
            rtts.append(time.perf_counter_ns() - t0)
            try:
                verify_reply(req, rep, HV_S_OK, expected_hb_reply_body(body))
                expect(len(rep.body) == len(body), "reply body %d bytes" % len(rep.body))
            except Check as e:
                bad += 1
                if first_err is None:
                    first_err = "heartbeat %d (seq 0x%x): %s" % (i, seq, e)
            seq = (seq + 1) & MASK64
    finally:
        c.close()
    expect(bad == 0, "%d of %d answers wrong; first: %s" % (bad, n, first_err))
    rtts.sort()
    p50 = rtts[len(rtts) // 2] / 1000.0
    p99 = rtts[min(len(rtts) - 1, (len(rtts) * 99) // 100)] / 1000.0
    ctx.p50, ctx.p99 = p50, p99
    return ("%d answers correct (seq+1 incl. u64 wrap, tid, flags 0x05, HV_S_OK, 16-byte body, state 0, "
            "reserved copied); RTT p50 %.1f us, p99 %.1f us" % (n, p50, p99))


def c_unknown_type(ctx):
    """3. icmsgtype 99 (and other non-heartbeat types) -> HV_E_FAIL, body echoed, connection usable."""
    c = Conn.dial(ctx.listen_path, name="unk")
    try:
        negotiate(c)
        for t, body in ((99, b"hello, agent"), (2, b"\x01" * 20), (0xFFFF, b""), (4, b"\x00" * 28)):
            req = build(t, body, frame=(3, 0), msgver=(3, 0), tid=t & 0xff)
            verify_reply(req, c.request(req), HV_E_FAIL, body)
        heartbeat(c, 41, tid=42)
        # Unknown type before negotiation is refused the same way.
        c2 = Conn.dial(ctx.listen_path, name="unk2")
        try:
            req = build(99, b"xyz", tid=7)
            verify_reply(req, c2.request(req), HV_E_FAIL, b"xyz")
        finally:
            c2.close()
    finally:
        c.close()
    return "types 99, 2, 0xffff, 4 answered HV_E_FAIL with the body echoed; heartbeat afterwards OK"


def c_heartbeat_before_negotiate(ctx):
    """5.3 step 4 and the 6.3 error example, byte for byte."""
    c = Conn.dial(ctx.listen_path, name="early")
    try:
        rep = c.request(DOC_HB_REQ)
        want = bytearray(DOC_HB_REQ)
        want[20:24] = bytes.fromhex("05400080")
        want[25] = 0x05
        expect(rep.raw == bytes(want), "answer %s, expected %s" % (rep.raw.hex(), bytes(want).hex()))
        negotiate(c)
        heartbeat(c, 255)
    finally:
        c.close()
    return "HV_E_FAIL, identical to the 6.3 error example; after negotiating the same connection serves"


def c_no_transaction(ctx):
    """5.1: requests without TRANSACTION are processed but never answered; responses are dropped."""
    c = Conn.dial(ctx.listen_path, name="notx")
    try:
        # A NEGOTIATE without TRANSACTION still negotiates (4.1) but gets no answer.
        silent_neg = build(NEGOTIATE, negotiate_body([(1, 0), (3, 0)], [(1, 0), (3, 0)]), flags=F_REQUEST, tid=1)
        hb0 = build(HEARTBEAT, hb_body(10), frame=(3, 0), msgver=(3, 0), flags=0x00, tid=2)
        hb2 = build(HEARTBEAT, hb_body(20), frame=(3, 0), msgver=(3, 0), flags=F_REQUEST, tid=3)
        bad_silent = build(99, b"nope", flags=0x00, tid=4)  # would be refused: still no answer
        short_silent = build(HEARTBEAT, b"\x01\x02", flags=F_REQUEST, tid=5)
        probe = build(HEARTBEAT, hb_body(30), frame=(3, 0), msgver=(3, 0), tid=6)
        c.send(silent_neg + hb0 + hb2 + bad_silent + short_silent + probe)
        rep = c.recv_msg()
        verify_reply(probe, rep, HV_S_OK, expected_hb_reply_body(hb_body(30)))
        expect(c.silent_for(0.3), "extra bytes after the only expected answer")
        # Messages with the RESPONSE bit are dropped and change nothing (0x04..0x07).
        c2 = Conn.dial(ctx.listen_path, name="resp")
        try:
            msgs = b""
            for i, fl in enumerate((0x04, 0x05, 0x06, 0x07)):
                msgs += build(NEGOTIATE, negotiate_body([(3, 0)], [(3, 0)]), flags=fl, tid=10 + i)
                msgs += build(HEARTBEAT, hb_body(i), frame=(3, 0), msgver=(3, 0), flags=fl, tid=20 + i)
            probe2 = build(HEARTBEAT, hb_body(99), frame=(3, 0), msgver=(3, 0), tid=30)
            rep = c2.request(msgs + probe2)
            # The dropped NEGOTIATE "responses" must not have negotiated the channel.
            verify_reply(probe2, rep, HV_E_FAIL, hb_body(99))
            expect(c2.silent_for(0.2), "extra bytes after the only expected answer")
        finally:
            c2.close()
    finally:
        c.close()
    return ("flags 0x00/0x02 requests (incl. NEGOTIATE, refusals) processed silently; RESPONSE-flag messages "
            "dropped without negotiating")


def c_heartbeat_lengths(ctx):
    """6.1/6.2: 8..16356-byte heartbeat bodies answered with the same length; < 8 -> HV_INVALIDARG."""
    c = Conn.dial(ctx.listen_path, name="len")
    try:
        negotiate(c)
        # Linux-style 40-byte body (u64 seq; u32 reserved[8]) with non-zero reserved words.
        linux = struct.pack("<Q8I", 12345, 1, 2, 3, 4, 5, 6, 7, 8)
        rep = heartbeat(c, 0, body=linux, tid=40)
        expect(len(rep.body) == 40, "40-byte request got a %d-byte answer" % len(rep.body))
        sizes = [8, 9, 11, 12, 13, 16, 17, 100, 4096, 4089, 8191, MAX_BODY]
        for n in sizes:
            body = struct.pack("<Q", (n * 1000003) & MASK64) + bytes((i * 7 + 1) & 0xFF for i in range(n - 8))
            if n >= 12:
                body = body[:8] + b"\x02\x00\x00\x00" + body[12:]  # CRITICAL: must come back as 0
            rep = heartbeat(c, 0, body=body, tid=n & 0xFF)
            expect(len(rep.raw) == 28 + n, "%d-byte body: whole reply %d bytes" % (n, len(rep.raw)))
        for n in (0, 1, 7):
            body = bytes(range(1, n + 1))
            req = build(HEARTBEAT, body, frame=(3, 0), msgver=(3, 0), tid=n)
            verify_reply(req, c.request(req), HV_INVALIDARG, body)
        heartbeat(c, MASK64, tid=0)  # wrap: 0xFFFFFFFFFFFFFFFF + 1 = 0
    finally:
        c.close()
    return ("40-byte Linux body -> 40-byte answer (state 0, reserved[1..8] copied); bodies of %s bytes "
            "answered in kind, up to a 16384-byte message; 0/1/7-byte bodies -> HV_INVALIDARG echoed"
            % ",".join(str(s) for s in sizes))


def c_ignored_fields(ctx):
    """2.1/2.3: pipe packet type 0 is accepted like 1; reserved, request status and version fields are ignored
    and copied/zeroed; every reply carries packet type 1."""
    c = Conn.dial(ctx.listen_path, name="ign")
    try:
        req = build(NEGOTIATE, negotiate_body([(3, 0)], [(3, 0)]), frame=(7, 7), msgver=(0xFFFF, 1),
                    pipe_type=0, reserved=0xA5A5, status=HV_E_FAIL, tid=0x80)
        verify_reply(req, c.request(req), HV_S_OK, negotiate_body([(3, 0)], [(3, 0)]))
        req = build(HEARTBEAT, hb_body(7), frame=(9, 1), msgver=(0, 0), pipe_type=1, reserved=0xFFFF,
                    status=0x12345678, flags=0xF3, tid=0xFE)  # 0xF3: other bits ignored, not RESPONSE
        verify_reply(req, c.request(req), HV_S_OK, hb_body(8))
    finally:
        c.close()
    return ("pipe type 0 and 1 accepted; reserved/status/versions in requests ignored; versions copied; "
            "replies carry pipe type 1 and 0s elsewhere")


def c_stream_framing(ctx):
    """1.6: byte-by-byte writes, pipelined batches, messages split across writes."""
    c = Conn.dial(ctx.listen_path, name="frm")
    try:
        neg = build(NEGOTIATE, negotiate_body([(1, 0), (3, 0)], [(1, 0), (3, 0)]))
        for i in range(len(neg)):  # one byte at a time
            c.send(neg[i:i + 1])
            if i % 8 == 0:
                time.sleep(0.002)
        verify_reply(neg, c.recv_msg(), HV_S_OK, DOC_NEGOTIATE_ANS[28:])
        # 200 pipelined heartbeats written in odd-sized chunks that cut across message boundaries.
        reqs = [build(HEARTBEAT, hb_body(1000 + i, reserved=struct.pack("<I", i)), frame=(3, 0), msgver=(3, 0),
                      tid=i & 0xFF) for i in range(200)]
        blob = b"".join(reqs)
        pos = 0
        step = 1
        while pos < len(blob):
            c.send(blob[pos:pos + step])
            pos += step
            step = step * 3 % 97 + 1
        for i, r in enumerate(reqs):
            rep = c.recv_msg()
            verify_reply(r, rep, HV_S_OK, expected_hb_reply_body(r[28:]))
    finally:
        c.close()
    return "byte-at-a-time negotiate answered; 200 pipelined heartbeats in ragged chunks answered in order"


def c_no_cross_blocking(ctx):
    """A half-sent message on one connection does not hold up another (connections are independent)."""
    a = Conn.dial(ctx.listen_path, name="A")
    b = Conn.dial(ctx.listen_path, name="B")
    try:
        negotiate(a)
        negotiate(b)
        hb = build(HEARTBEAT, hb_body(1), frame=(3, 0), msgver=(3, 0), tid=1)
        a.send(hb[:30])
        heartbeat(b, 2)
        expect(a.silent_for(0.1), "A answered a partial message")
        a.send(hb[30:])
        verify_reply(hb, a.recv_msg(), HV_S_OK, hb_body(2))
    finally:
        a.close()
        b.close()
    return "B served while A held a partial message; A answered once completed"


def c_garbage_isolated(ctx):
    """4. Framing violations close only their own connection, without a reply (2.2, 2.4)."""
    good = Conn.dial(ctx.listen_path, name="good")
    seq = [500]

    def good_still_works(k=20):
        for _ in range(k):
            heartbeat(good, seq[0], tid=seq[0] & 0xFF)
            seq[0] += 1

    hb = hb_body(1)
    garbage = [
        # label, bytes, negotiate first?, acceptable close kinds
        ("msgsize 44 != 20+icmsgsize 10", build(HEARTBEAT, icmsgsize=10, msgsize=44), True),
        ("msgsize 30 != 20+icmsgsize 16 (body sent)", build(HEARTBEAT, hb, msgsize=30), True),
        ("msgsize 8 < 20", build(HEARTBEAT, msgsize=8, icmsgsize=0), True),
        ("header-only msgsize 16377 > 16376", build(HEARTBEAT, icmsgsize=16357), True),
        ("whole 16385-byte message", build(HEARTBEAT, bytes(MAX_BODY + 1)), True),
        ("msgsize 0xFFFFFFFF", build(HEARTBEAT, msgsize=0xFFFFFFFF, icmsgsize=0xFFFF), True),
        ("bad sizes before negotiating", build(NEGOTIATE, icmsgsize=24, msgsize=20), False),
        ("random bytes", bytes((i * 37 + 11) & 0xFF for i in range(28)), True),
        ("pipe packet type 2 (PARTIAL)", build(HEARTBEAT, hb, frame=(3, 0), msgver=(3, 0), pipe_type=2), True),
        ("pipe packet type 0xDEADBEEF", build(HEARTBEAT, hb, frame=(3, 0), msgver=(3, 0), pipe_type=0xDEADBEEF),
         True),
        ("pipe packet type 3 before negotiating", build(NEGOTIATE, negotiate_body([(3, 0)], [(3, 0)]),
                                                        pipe_type=3), False),
    ]
    details = []
    try:
        negotiate(good)
        good_still_works()
        for label, blob, neg_first in garbage:
            bad = Conn.dial(ctx.listen_path, name="bad")
            try:
                if neg_first:
                    negotiate(bad)
                    heartbeat(bad, 1)
                try:
                    bad.send(blob)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                t0 = time.monotonic()
                how, stray = bad.wait_closed(3.0)
                dt = (time.monotonic() - t0) * 1000
                expect(how is not None, "%s: connection not closed within 3 s" % label)
                expect(stray == b"", "%s: agent sent %s before closing (2.4: no reply)" % (label, stray.hex()))
                details.append("%s: %s %.0fms" % (label, how, dt))
            finally:
                bad.close()
            good_still_works()
    finally:
        good.close()
    expect(ctx.agent_listen.alive(), "agent died")
    return "each closed without a reply while the other connection kept answering (" + "; ".join(details) + ")"


def c_replies_before_framing_error(ctx):
    """5.1/5.2: a valid request that arrived before a framing error gets its one reply, in order, before the
    agent closes (2.4 closes "without a reply" to the bad message only)."""
    c = Conn.dial(ctx.listen_path, name="prebad")
    try:
        negotiate(c)
        pre = build(HEARTBEAT, hb_body(9), frame=(3, 0), msgver=(3, 0), tid=9)
        garbage = build(HEARTBEAT, icmsgsize=10, msgsize=44)
        c.send(pre + garbage)  # one write: the agent will likely read both at once
        how, stray = c.wait_closed(3.0)
        expect(how is not None, "connection not closed within 3 s")
        want = pre[:20] + struct.pack("<IBBH", HV_S_OK, 9, REPLY_FLAGS, 0) + hb_body(10)
        expect(stray == want, "received %s before %s; expected exactly the heartbeat's answer %s (the agent "
               "processed the heartbeat but its reply was lost on close)" % (stray.hex() or "nothing", how,
                                                                             want.hex()))
    finally:
        c.close()
    return "the heartbeat written together with the garbage was answered, then %s" % how


def c_two_conns_garbage(ctx):
    """4. (as specified) two listen-mode connections, both negotiated; garbage on one."""
    a = Conn.dial(ctx.listen_path, name="A")
    b = Conn.dial(ctx.listen_path, name="B")
    try:
        negotiate(a)
        negotiate(b)
        heartbeat(a, 1)
        heartbeat(b, 1)
        a.send(build(HEARTBEAT, icmsgsize=10, msgsize=44))
        how, stray = a.wait_closed(3.0)
        expect(how is not None, "garbage connection not closed within 3 s")
        expect(stray == b"", "agent sent %d bytes before closing" % len(stray))
        for i in range(100):
            heartbeat(b, 100 + i, tid=i)
    finally:
        a.close()
        b.close()
    return "garbage connection got %s with no reply; the other answered 100 more heartbeats" % how


def c_max_connections(ctx, exe, tmp):
    """1.4: up to 64 connections per service at once; further ones accepted and closed at once."""
    path = os.path.join(tmp, "agent64.sock")
    agent = Agent(exe, tmp, "listen64", 'listen = "unix:%s"' % path, path).start()
    conns = []
    try:
        for i in range(64):
            conns.append(Conn.dial(path, name="c%d" % i))
        for i, c in enumerate(conns):
            negotiate(c, tid=i)
        extra = Conn.dial(path, name="c65")
        how, stray = extra.wait_closed(3.0)
        extra.close()
        expect(how is not None and stray == b"", "65th connection: closed=%s, %d bytes" % (how, len(stray)))
        for i, c in enumerate(conns):
            heartbeat(c, i, tid=i)
        # Free one slot; a new connection must be served (the agent has to notice the EOF first).
        conns.pop().close()
        deadline = time.monotonic() + 3.0
        served = False
        while time.monotonic() < deadline and not served:
            c = Conn.dial(path, name="again")
            try:
                negotiate(c)
                heartbeat(c, 1)
                served = True
            except (Closed, Check, OSError):
                time.sleep(0.05)
            finally:
                c.close()
        expect(served, "no connection served within 3 s after one of the 64 closed")
    finally:
        for c in conns:
            c.close()
        rc = agent.stop()
    expect(rc == 0, "agent exit code %s on SIGTERM" % rc)
    return "64 concurrent channels negotiated and served; the 65th closed without a byte (%s); a freed slot " \
           "is reused" % how


def c_backpressure(ctx, exe, tmp):
    """1.5: a host that stops reading while sending gets closed once > 256 KiB of replies wait."""
    path = os.path.join(tmp, "agentbp.sock")
    agent = Agent(exe, tmp, "listenbp", 'listen = "unix:%s"' % path, path).start()
    c = Conn.dial(path, name="bp")
    sent = 0
    send_err = None
    try:
        negotiate(c)
        req = build(HEARTBEAT, hb_body(1) + bytes(MAX_BODY - 16), frame=(3, 0), msgver=(3, 0), tid=1)
        blob = req * 64  # 1 MiB per write
        deadline = time.monotonic() + 10.0
        c.sock.setblocking(False)
        total = 8 * len(blob)  # 8 MiB of requests -> 8 MiB of replies, far over any socket buffer + 256 KiB
        view = memoryview(blob)
        off = 0
        while sent < total and time.monotonic() < deadline:
            _, w, _ = select.select([], [c.sock], [], 0.2)
            if not w:
                continue
            try:
                n = c.sock.send(view[off:])
            except (BrokenPipeError, ConnectionResetError) as e:
                send_err = type(e).__name__
                break
            sent += n
            off = (off + n) % len(blob)
        c.sock.setblocking(True)
        n_sent = sent // len(req)
        replies = 0
        how = None
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:
            try:
                c.recv_msg(max(0.01, t_end - time.monotonic()))
                replies += 1
            except Closed:
                how = "EOF"
                break
            except ConnectionResetError:
                how = "ECONNRESET"
                break
            except Check:
                break
        expect(how is not None or send_err is not None,
               "not closed: sent %d requests (%d bytes) without reading, then read %d replies and no EOF"
               % (n_sent, sent, replies))
        expect(replies < n_sent, "all %d replies arrived; nothing was dropped" % n_sent)
        expect(agent.alive(), "agent died")
    finally:
        c.close()
        rc = agent.stop()
    expect(rc == 0, "agent exit code %s on SIGTERM" % rc)
    return ("after %d unread 16 KiB requests the agent closed the connection (send: %s, read: %d replies then %s)"
            % (n_sent, send_err or "ok", replies, how))


def c_redial(ctx, exe, tmp):
    """5. Connect mode: garbage -> the agent closes and dials again; negotiate + heartbeats work again."""
    path = os.path.join(tmp, "host.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(8)
    agent = Agent(exe, tmp, "connect", 'connect = "unix:%s"' % path).start()

    def accept(timeout):
        r, _, _ = select.select([lsock], [], [], timeout)
        expect(r, "the agent did not dial the host within %.1f s (agent log: %s)" % (timeout, agent.log_tail()))
        s, _ = lsock.accept()
        return Conn(s, name="dialed")

    details = []
    try:
        c = accept(10.0)
        try:
            expect(c.silent_for(0.3), "agent spoke before the host's NEGOTIATE (4.1)")
            negotiate(c)
            for i in range(50):
                heartbeat(c, i, tid=i)
            c.send(build(HEARTBEAT, icmsgsize=10, msgsize=44))
            t0 = time.monotonic()
            how, stray = c.wait_closed(3.0)
            expect(how is not None, "connection with garbage not closed within 3 s")
            expect(stray == b"", "agent replied %d bytes to garbage" % len(stray))
        finally:
            c.close()
        c = accept(5.0)
        dt = (time.monotonic() - t0) * 1000
        details.append("garbage -> %s, redial after %.0f ms" % (how, dt))
        try:
            expect(c.silent_for(0.2), "agent spoke first on the new connection")
            # New connection starts from scratch: heartbeat before negotiating is refused (1.5).
            hb = build(HEARTBEAT, hb_body(3), frame=(3, 0), msgver=(3, 0), tid=3)
            verify_reply(hb, c.request(hb), HV_E_FAIL, hb[28:])
            negotiate(c)
            for i in range(200):
                heartbeat(c, 1000 + i, tid=i)
            r, _, _ = select.select([lsock], [], [], 0)
            expect(not r, "the agent opened a second connection while the first was healthy")
            # The host closing its end also makes the agent redial.
            t0 = time.monotonic()
        finally:
            c.close()
        c = accept(5.0)
        details.append("host close -> redial after %.0f ms" % ((time.monotonic() - t0) * 1000))
        try:
            negotiate(c)
            heartbeat(c, 7)
        finally:
            c.close()
        # Nothing listening: the agent keeps retrying and connects once the host listens again.
        lsock.close()
        os.unlink(path)
        time.sleep(0.7)
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(8)
        t0 = time.monotonic()
        c = accept(6.0)
        details.append("host back after 0.7 s down -> dialed in %.0f ms" % ((time.monotonic() - t0) * 1000))
        try:
            negotiate(c)
            heartbeat(c, 8)
        finally:
            c.close()
        expect(agent.alive(), "agent died")
    finally:
        lsock.close()
        rc = agent.stop()
    expect(rc == 0, "agent exit code %s on SIGTERM" % rc)
    return "; ".join(details) + "; negotiation and heartbeats work on each new connection"


def c_bad_config(ctx, exe, tmp):
    cfg = os.path.join(tmp, "bad.toml")
    with open(cfg, "w") as f:
        f.write("log_level = \n[heartbeat\n")
    try:
        p = subprocess.run([exe, "--config", cfg], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=5)
    except subprocess.TimeoutExpired:
        raise Check("agent with a broken config still running after 5 s")
    expect(p.returncode == 2, "exit code %d, expected 2" % p.returncode)
    return "unparsable config -> exit 2"


# ---------------------------------------------------------------------------------------------------------


def main():
    if len(sys.argv) != 2:
        print("usage: %s PATH_TO_HVAGENT" % sys.argv[0], file=sys.stderr)
        return 2
    exe = os.path.abspath(sys.argv[1])
    if not os.access(exe, os.X_OK):
        print("not an executable: %s" % exe, file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="hvspec.")

    def on_alarm(signum, frame):
        kill_all_agents()
        shutil.rmtree(tmp, ignore_errors=True)
        print("FAIL watchdog: the run exceeded 55 s", flush=True)
        passed = sum(1 for _, ok in results if ok)
        print("interop: %d passed, %d failed" % (passed, len(results) - passed + 1), flush=True)
        os._exit(1)

    def on_term(signum, frame):
        raise SystemExit(1)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(55)

    t_start = time.monotonic()
    try:
        ctx = Ctx()
        ctx.listen_path = os.path.join(tmp, "agent.sock")
        ctx.agent_listen = Agent(exe, tmp, "listen", 'listen = "unix:%s"' % ctx.listen_path,
                                 ctx.listen_path).start()

        run("negotiate-doc-offer", c_negotiate_doc_example, ctx)
        run("negotiate-choices", c_negotiate_choices, ctx)
        run("negotiate-no-common-version", c_negotiate_no_common, ctx)
        run("negotiate-malformed", c_negotiate_malformed, ctx)
        run("heartbeat-10000", c_heartbeats_10k, ctx)
        run("unknown-type", c_unknown_type, ctx)
        run("heartbeat-before-negotiate", c_heartbeat_before_negotiate, ctx)
        run("no-transaction-no-answer", c_no_transaction, ctx)
        run("heartbeat-body-lengths", c_heartbeat_lengths, ctx)
        run("ignored-fields", c_ignored_fields, ctx)
        run("stream-framing", c_stream_framing, ctx)
        run("connections-independent", c_no_cross_blocking, ctx)
        run("garbage-closes-own-connection", c_two_conns_garbage, ctx)
        run("framing-violations", c_garbage_isolated, ctx)
        run("reply-before-framing-error", c_replies_before_framing_error, ctx)

        def listen_agent_stops():
            expect(ctx.agent_listen.alive(), "agent died during the run (log: %s)" % ctx.agent_listen.log_tail())
            rc = ctx.agent_listen.stop()
            expect(rc == 0, "exit code %s on SIGTERM" % rc)
            return "listen-mode agent alive throughout, exit 0 on SIGTERM"

        run("listen-agent-sigterm", listen_agent_stops)
        run("max-connections", c_max_connections, ctx, exe, tmp)
        run("reply-backpressure", c_backpressure, ctx, exe, tmp)
        run("connect-mode-redial", c_redial, ctx, exe, tmp)
        run("bad-config", c_bad_config, ctx, exe, tmp)
    finally:
        kill_all_agents()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.alarm(0)

    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print("(run took %.1f s)" % (time.monotonic() - t_start))
    print("interop: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
