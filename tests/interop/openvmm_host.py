#!/usr/bin/env python3
"""openvmm_host.py: play Microsoft openvmm's host side of the Hyper-V integration services against hvagent.

Run:   python3 tests/interop/openvmm_host.py target/debug/hvagent [--keep] [--dump]

The script starts hvagent a few times with a generated config in a temp dir (Unix sockets only; every service
in connect mode, so this script listens and the agent dials, as on Hyper-V), sends time-sync, shutdown, KVP
and heartbeat messages exactly as openvmm's host devices build them, and checks every reply with openvmm's
parsing rules. It prints one PASS/FAIL line per check, the agent's log tail after a failure, and finally
"openvmm-interop: N passed, M failed"; the exit status is 1 on any failure. --keep keeps the temp dir;
--dump prints, field by field, the first answer of each message type the agent sends.
Safety: time sync runs in mode "monitor" with probe_interval 0, the shutdown commands only write env files.

Written only from public sources (no hvagent protocol code or docs):
  microsoft/openvmm at commit 1488a37b7
    framing      vm/devices/vmbus/vmbus_ring/src/lib.rs (mod pipe_protocol: PipeHeader, PIPE_PACKET_TYPE_*,
                 MAXIMUM_PIPE_PACKET_SIZE), vm/devices/vmbus/vmbus_async/src/pipe.rs (PipeWriter::
                 try_write_message, PipeReader::try_read_message "invalid pipe packet type", MessagePipe::
                 new_inner)
    IC header,   vm/devices/hyperv_ic_protocol/src/lib.rs (Header, HeaderFlags, MessageType, Status,
    negotiation  NegotiateMessage, MAX_MESSAGE_SIZE), vm/devices/hyperv_ic/src/common.rs (FRAMEWORK_VERSIONS,
                 IcPipe::negotiate, write_message, read_response, read_message)
    time sync    vm/devices/hyperv_ic_protocol/src/timesync.rs (TimesyncMessageV4, TimesyncFlags, EPOCH),
                 vm/devices/hyperv_ic/src/timesync.rs (TIMESYNC_VERSIONS, SAMPLE_PERIOD, process_state_machine)
    shutdown     vm/devices/hyperv_ic_protocol/src/shutdown.rs (ShutdownMessage, ShutdownFlags,
                 SHTDN_REASON_FLAG_PLANNED), vm/devices/hyperv_ic/src/shutdown.rs (SHUTDOWN_VERSIONS,
                 ShutdownChannel::process_state_machine)
    KVP          vm/devices/hyperv_ic_protocol/src/kvp.rs (KvpHeader, KvpOperation, KvpPool, Value, ValueType,
                 MessageGetSet/Delete/Enumerate, KvpMessage, KvpMessage2, MessageIpAddressInfoBinary),
                 vm/devices/hyperv_ic/src/kvp.rs (KVP_VERSIONS, process_state_machine, msg, msg2, write_str,
                 write_value, parse_response, parse_enumerate_response, parse_str, prepare_get_ip_info,
                 parse_ip_info_response), openvmm/openvmm_entry/src/kvp.rs (the host's Get = enumerate and
                 match; the pools), vmm_tests/vmm_tests/tests/tests/multiarch/ic.rs (kvp_ic: Set, Enumerate)
    heartbeat    vm/devices/hyperv_ic_protocol/src/heartbeat.rs (HeartbeatMessage, ApplicationState); openvmm
                 has no host heartbeat device, so the exchange follows Linux
  torvalds/linux
    include/linux/hyperv.h (vmbuspipe_hdr, icmsg_hdr, icmsg_negotiate, shutdown_msg_data, heartbeat_msg_data,
      ictimesync_ref_data, ICMSGHDRFLAG_*), include/uapi/linux/hyperv.h (hv_kvp_hdr, hv_kvp_exchg_msg_value,
      REG_*, KVP pools, HV_S_CONT), drivers/hv/hv_util.c (shutdown/timesync/heartbeat_onchannelcallback,
      hb_versions), drivers/hv/channel_mgmt.c (vmbus_prep_negotiate_resp), drivers/hv/hv_kvp.c
      (kvp_respond_to_host, kvp_versions), tools/hv/hv_kvp_daemon.c (the AUTO pool's keys, HV_S_CONT)

A wrong pipe packet type makes openvmm fail the channel at once; here it is counted in the per-session
"pipe packets" check and the payload is still parsed, so that later faults show as well.
"""
import collections
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

OPENVMM_COMMIT = "1488a37b7"
REPLY_TIMEOUT = 3.0      # seconds the host waits for each answer
CONNECT_TIMEOUT = 10.0   # seconds for the agent to dial in
SAMPLE_PERIOD = 0.2      # openvmm timesync.rs SAMPLE_PERIOD is 5 s; shortened to keep the run short

# ---- VMBus pipe framing -------------------------------------------------------------------------------------
# vmbus_ring/src/lib.rs, mod pipe_protocol, struct PipeHeader { packet_type: u32, len: u32 }. Linux calls the
# same 8 bytes struct vmbuspipe_hdr { u32 flags; u32 msgsize; } and echoes the host's header in its answers.
PIPE_HDR = struct.Struct("<II")
PIPE_PACKET_TYPE_DATA = 1        # the only type PipeWriter::try_write_message writes and try_read_message accepts
MAXIMUM_PIPE_PACKET_SIZE = 16384  # pipe_protocol::MAXIMUM_PIPE_PACKET_SIZE (MessagePipe::new_inner's cap)
MAX_MESSAGE_SIZE = 13312          # hyperv_ic_protocol/src/lib.rs: IcPipe's receive buffer; longer = PacketTooLarge

# ---- IC header: hyperv_ic_protocol/src/lib.rs struct Header (#[repr(C)], 20 bytes, no padding) ==
# Linux include/linux/hyperv.h struct icmsg_hdr (__packed).
IC_HDR = struct.Struct("<HHHHHHIBBH")
Hdr = collections.namedtuple("Hdr", "fw_major fw_minor type msg_major msg_minor size status txid flags reserved")
MSG_NEGOTIATE, MSG_HEARTBEAT, MSG_KVP, MSG_SHUTDOWN, MSG_TIMESYNC = 0, 1, 2, 3, 4  # lib.rs enum MessageType
FLAG_TRANSACTION, FLAG_REQUEST, FLAG_RESPONSE = 1, 2, 4  # lib.rs HeaderFlags bits 0..2 (Linux ICMSGHDRFLAG_*)
REQUEST_FLAGS = FLAG_TRANSACTION | FLAG_REQUEST          # what every openvmm host message carries
RESPONSE_FLAGS = FLAG_TRANSACTION | FLAG_RESPONSE        # Linux sets icflags to exactly this in every answer
# lib.rs enum Status (Linux uapi hyperv.h HV_S_OK, HV_S_CONT, HV_E_FAIL, HV_ERROR_NOT_SUPPORTED, HV_GUID_NOTFOUND)
S_OK, NO_MORE_ITEMS, E_FAIL, NOT_SUPPORTED, NOT_FOUND = 0, 0x80070103, 0x80004005, 0x80070032, 0x80041002

# lib.rs struct NegotiateMessage { framework_version_count: u16, message_version_count: u16, reserved: u32 },
# followed by the Version { major: u16, minor: u16 } table (Linux struct icmsg_negotiate, ic_version).
NEGOTIATE = struct.Struct("<HHI")
VERSION = struct.Struct("<HH")
FRAMEWORK_VERSIONS = [(1, 0), (3, 0)]               # hyperv_ic/src/common.rs FRAMEWORK_VERSIONS
TIMESYNC_VERSIONS = [(4, 0)]                        # hyperv_ic/src/timesync.rs TIMESYNC_VERSIONS
SHUTDOWN_VERSIONS = [(1, 0), (3, 0), (3, 1), (3, 2)]  # hyperv_ic/src/shutdown.rs SHUTDOWN_VERSIONS
KVP_VERSIONS = [(3, 0), (4, 0), (5, 0)]             # hyperv_ic/src/kvp.rs KVP_VERSIONS
# openvmm defines no heartbeat versions (it has no host heartbeat device): Linux hv_util.c hb_versions
# {3.0, 1.0}, offered in ascending order like openvmm's other tables.
HEARTBEAT_VERSIONS = [(1, 0), (3, 0)]

# ---- time sync: hyperv_ic_protocol/src/timesync.rs struct TimesyncMessageV4 (#[repr(C)], 24 bytes):
# parent_time u64, vm_reference_time u64, flags u8, leap_indicator u8, stratum u8, reserved [u8; 5].
# Linux disagrees on the size: struct ictimesync_ref_data is __packed with reserved[3], i.e. 22 bytes
# (hv_util.c only requires recvlen >= ICMSG_HDR + 22, so openvmm's 24 bytes are accepted).
TS_V4 = struct.Struct("<QQBBB5s")
TS_SYNC, TS_SAMPLE = 1, 2   # TimesyncFlags bits (Linux ICTIMESYNCFLAG_SYNC / ICTIMESYNCFLAG_SAMPLE)
TS_RESERVED_BIT = 0x80      # TimesyncFlags _rsvd bits 2..7
EPOCH_DELTA_100NS = 116444736000000000  # timesync.rs EPOCH (1601-01-01) == Linux WLTIMEDELTA

# ---- shutdown: hyperv_ic_protocol/src/shutdown.rs struct ShutdownMessage (#[repr(C)], 2060 bytes):
# reason_code u32, timeout_secs u32, flags ShutdownFlags (u32), message [u8; 2048] (Linux struct
# shutdown_msg_data, __packed, u8 display_message[2048]: bytes on both sides; openvmm leaves it all zero).
SHUTDOWN_MSG = struct.Struct("<III2048s")
SD_FORCE, SD_RESTART, SD_HIBERNATE = 1, 2, 4   # ShutdownFlags bits (hv_util.c: 0/1 off, 2/3 reboot, 4/5 hibernate)
SHTDN_REASON_FLAG_PLANNED = 0x80000000         # shutdown.rs, what process_state_machine sends as reason_code

# ---- KVP: hyperv_ic_protocol/src/kvp.rs
KVP_MESSAGE_SIZE = 2 + 2578        # struct KvpMessage { header: KvpHeader (2 bytes), data: [u8; 2578] }
KVP_MESSAGE2_SIZE = 2 + 0x1D02     # struct KvpMessage2 (the IP-info message)
KVP_BODY_OFFSET = 4                # hyperv_ic/src/kvp.rs msg()/msg2(): T starts align_of::<T>() bytes in (4 for
                                   # all the u32-aligned bodies; Linux: hv_kvp_hdr {u8 op, u8 pool, u16 pad})
KVP_VALUE = struct.Struct("<III512s2048s")  # struct Value: value_type, key_size, value_size, key [u16; 256],
                                            # value [u8; 2048] = 2572 bytes (Linux hv_kvp_exchg_msg_value)
OP_GET, OP_SET, OP_DELETE, OP_ENUMERATE, OP_GET_IP_INFO = 0, 1, 2, 3, 4   # kvp.rs enum KvpOperation
POOL_EXTERNAL, POOL_GUEST, POOL_AUTO, POOL_AUTO_EXTERNAL = 0, 1, 2, 3     # kvp.rs enum KvpPool
# kvp.rs enum ValueType. Linux disagrees on the 64-bit type: uapi hyperv.h REG_U64 is 8, openvmm's QWORD is 11
# (Windows REG_QWORD); and Linux answers every enumeration with REG_SZ (hv_kvp.c kvp_respond_to_host).
VT_STRING, VT_EXPAND_STRING, VT_DWORD, VT_QWORD = 1, 2, 4, 11
MAX_KEY_UNITS, MAX_VALUE_UNITS = 512 // 2, 2048 // 2   # kvp.rs MAX_KEY_BYTES / MAX_VALUE_BYTES in u16 units
IPINFO_BINARY_SIZE = 3712   # kvp.rs struct MessageIpAddressInfoBinary (#[repr(C)], align 4)

# ---- heartbeat: hyperv_ic_protocol/src/heartbeat.rs struct HeartbeatMessage (#[repr(C)], 16 bytes):
# sequence_number u64, application_state u32, reserved [u8; 4]. Linux disagrees: struct heartbeat_msg_data is
# {u64 seq_num; u32 reserved[8]} (40 bytes) and reads only seq_num (recvlen >= ICMSG_HDR + 8).
HB_MSG = struct.Struct("<QI4s")
APP_STATES = {0: "UNKNOWN", 1: "HEALTHY", 2: "CRITICAL", 3: "STOPPED"}   # heartbeat.rs ApplicationState


class ProtocolError(Exception):
    """Something openvmm's host (or, where said, Linux's behaviour) would not accept."""


class NoReply(ProtocolError):
    pass


class Closed(ProtocolError):
    pass


# ---- one connection: openvmm's MessagePipe + IcPipe over a Unix stream socket ------------------------------
class Channel:
    def __init__(self, sock, name):
        self.sock, self.name = sock, name
        self.pipe_types = []     # pipe packet type of every packet the agent sent
        self.dropped = []        # message types dropped while negotiating (openvmm's negotiate loop drops them)
        self.versions = None     # negotiated ((fw major, minor), (msg major, minor))
        self.broken = None       # set once the byte stream cannot be framed any more

    def close(self):
        self.sock.close()

    def send_packet(self, payload):
        # PipeWriter::try_write_message: PipeHeader { PIPE_PACKET_TYPE_DATA, len } then the message.
        assert len(payload) <= MAXIMUM_PIPE_PACKET_SIZE
        self.sock.sendall(PIPE_HDR.pack(PIPE_PACKET_TYPE_DATA, len(payload)) + payload)

    def _read_exact(self, n, deadline):
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply(f"no complete answer within {REPLY_TIMEOUT:g}s ({len(data)} of {n} bytes)")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                continue
            if not chunk:
                raise Closed(f"agent closed the connection ({len(data)} of {n} bytes read)")
            data += chunk
        return data

    dumped = set()   # (session, message type) pairs already printed by --dump

    def dump(self, ptype, payload):
        """--dump: the pipe header, the IC header field by field, and the body (its first 48 bytes)."""
        if len(payload) < IC_HDR.size:
            return
        h = Hdr(*IC_HDR.unpack_from(payload))
        if (self.name, h.type) in Channel.dumped:
            return
        Channel.dumped.add((self.name, h.type))
        raw = PIPE_HDR.pack(ptype, len(payload)) + payload
        fields = [("pipe packet type", 0, 4), ("pipe len", 4, 8), ("framework version", 8, 12),
                  ("message type", 12, 14), ("message version", 14, 18), ("message_size", 18, 20),
                  ("status", 20, 24), ("transaction_id", 24, 25), ("flags", 25, 26), ("reserved", 26, 28)]
        body = payload[IC_HDR.size:]
        print(f"DUMP {self.name}: agent -> host, message type {h.type}, {len(raw)} bytes")
        for label, a, b in fields:
            print(f"DUMP   {a:4d}  {raw[a:b].hex(' '):<24} {label}")
        more = f" ... ({len(body)} bytes)" if len(body) > 48 else ""
        print(f"DUMP   {28:4d}  {body[:48].hex(' ')}{more}")

    def recv_packet(self, timeout=REPLY_TIMEOUT):
        # PipeReader::try_read_message: anything but PIPE_PACKET_TYPE_DATA is InvalidPipePacketType (recorded for
        # the pipe check, see the docstring); a payload longer than the receive buffer is PacketTooLarge.
        if self.broken:
            raise ProtocolError(f"channel unusable since: {self.broken}")
        deadline = time.monotonic() + timeout
        ptype, length = PIPE_HDR.unpack(self._read_exact(PIPE_HDR.size, deadline))
        self.pipe_types.append(ptype)
        if length > min(MAX_MESSAGE_SIZE, MAXIMUM_PIPE_PACKET_SIZE):
            self.broken = f"pipe packet of {length} bytes (type {ptype:#x}): openvmm PacketTooLarge"
            raise ProtocolError(self.broken)
        payload = self._read_exact(length, deadline)
        if DUMP:
            self.dump(ptype, payload)
        return payload

    def read_message(self):
        # IcPipe::read_message: header present, transaction_id 0, TRANSACTION and RESPONSE set, body of
        # message_size bytes present (extra bytes after it are allowed: Linux answers in the request's buffer).
        payload = self.recv_packet()
        if len(payload) < IC_HDR.size:
            raise ProtocolError(f"missing header ({len(payload)}-byte message)")
        h = Hdr(*IC_HDR.unpack_from(payload))
        if h.txid != 0 or not h.flags & FLAG_TRANSACTION or not h.flags & FLAG_RESPONSE:
            raise ProtocolError(f"invalid transaction response (transaction_id {h.txid}, flags {h.flags:#04x})")
        body = payload[IC_HDR.size:IC_HDR.size + h.size]
        if len(body) < h.size:
            raise ProtocolError(f"missing message body (message_size {h.size}, {len(body)} bytes follow)")
        return h, body

    def negotiate(self, message_versions):
        # IcPipe::negotiate (SendVersion): header all zero but type 0, message_size, TRANSACTION|REQUEST.
        body = NEGOTIATE.pack(len(FRAMEWORK_VERSIONS), len(message_versions), 0)
        body += b"".join(VERSION.pack(*v) for v in FRAMEWORK_VERSIONS + message_versions)
        self.send_packet(IC_HDR.pack(0, 0, MSG_NEGOTIATE, 0, 0, len(body), S_OK, 0, REQUEST_FLAGS, 0) + body)
        while True:   # WaitVersion
            h, b = self.read_message()
            if h.type != MSG_NEGOTIATE:
                self.dropped.append(h.type)
                continue
            if len(b) < NEGOTIATE.size:
                raise ProtocolError("missing negotiate message")
            fwc, mvc, _ = NEGOTIATE.unpack_from(b)
            if fwc != 1 or mvc != 1:
                raise ProtocolError(f"no supported versions (framework_version_count {fwc}, "
                                    f"message_version_count {mvc})")
            if len(b) < NEGOTIATE.size + 2 * VERSION.size:
                raise ProtocolError("missing version table")
            fw, mv = VERSION.unpack_from(b, 8), VERSION.unpack_from(b, 12)
            self.versions = (fw, mv)
            return h, fw, mv

    def write_message(self, msg_type, body):
        # IcPipe::write_message: negotiated versions, status SUCCESS, transaction_id 0; every openvmm host
        # message is TRANSACTION|REQUEST ("Windows ignores non-transactional time sync requests").
        (fw, mv) = self.versions
        self.send_packet(IC_HDR.pack(fw[0], fw[1], msg_type, mv[0], mv[1], len(body), S_OK, 0, REQUEST_FLAGS, 0)
                         + body)

    def read_response(self, msg_type):
        h, body = self.read_message()   # openvmm's read_response checks only this
        # Beyond openvmm: Linux answers in the request's buffer (message type echoed) with icflags exactly
        # TRANSACTION|RESPONSE.
        if h.type != msg_type:
            raise ProtocolError(f"answer has message type {h.type}, request had {msg_type} (Linux echoes it)")
        if h.flags != RESPONSE_FLAGS:
            raise ProtocolError(f"answer flags {h.flags:#04x}, expected exactly {RESPONSE_FLAGS:#04x} (Linux)")
        return h, body

    def transact(self, msg_type, body, want_status=S_OK):
        self.write_message(msg_type, body)
        h, reply = self.read_response(msg_type)
        if want_status is not None and h.status != want_status:
            raise ProtocolError(f"status {h.status:#010x}, expected {want_status:#010x}")
        return h, reply

    def drain(self, quiet=0.3):
        """Messages the agent sends unasked (none are expected). Returns their count; stops at EOF."""
        n = 0
        while True:
            try:
                self.recv_packet(timeout=quiet)
                n += 1
            except (NoReply, Closed):
                return n
            except ProtocolError:   # an unsolicited packet that is too large
                return n + 1


# ---- results, agents --------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, binary, tmp):
        self.binary, self.tmp = binary, tmp
        self.passed = self.failed = 0
        self.agents = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def step(self, name, fn):
        """Run one check; fn returns a detail string, or raises ProtocolError/OSError for a failure."""
        try:
            return self.check(name, True, fn() or "")
        except (ProtocolError, OSError) as e:
            return self.check(name, False, f"{type(e).__name__}: {e}")


def shutdown_command(d, action):
    return ["/bin/sh", "-c", f"env > {d}/{action}.tmp && mv {d}/{action}.tmp {d}/{action}.env"]


def render_config(d, services, state_dir):
    q = json.dumps   # TOML basic strings accept JSON string syntax
    lines = ['log_level = "debug"', "redial_min = 0.05", "redial_max = 0.5"]
    for svc in ("heartbeat", "timesync", "shutdown", "guestinfo"):
        lines.append(f"\n[{svc}]")
        lines += ["enabled = true", f"connect = {q('unix:' + services[svc])}"] if svc in services \
            else ["enabled = false"]
        if svc == "heartbeat":
            lines.append('health = "none"')
        elif svc == "timesync":   # never touch this machine's clock
            lines += ['mode = "monitor"', "probe_interval = 0"]
        elif svc == "shutdown":   # never really shut down
            lines += [f"{a} = {q(shutdown_command(d, a))}" for a in ("poweroff", "reboot", "hibernate")]
            lines.append("force_after = 0")
        else:
            lines.append(f"state_dir = {q(state_dir)}")
    return "\n".join(lines) + "\n"


class Agent:
    def __init__(self, ctx, name, services, state_dir=None):
        self.ctx, self.name = ctx, name
        self.dir = os.path.join(ctx.tmp, name)
        os.makedirs(self.dir)
        self.servers = {}
        for svc in services:   # listen before the agent dials
            path = os.path.join(self.dir, svc + ".sock")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(4)
            self.servers[svc] = (s, path)
        state_dir = state_dir or os.path.join(self.dir, "state")
        cfg = os.path.join(self.dir, "hvagent.toml")
        with open(cfg, "w") as f:
            f.write(render_config(self.dir, {k: v[1] for k, v in self.servers.items()}, state_dir))
        self.log_path = os.path.join(self.dir, "agent.log")
        self.log = open(self.log_path, "wb")
        self.failed_before = ctx.failed
        self.proc = subprocess.Popen([ctx.binary, "--config", cfg, "--control", os.path.join(self.dir, "ctl")],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        ctx.agents.append(self)

    def accept(self, svc):
        server = self.servers[svc][0]
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while time.monotonic() < deadline:
            server.settimeout(0.1)
            try:
                conn, _ = server.accept()
                return Channel(conn, f"{self.name}/{svc}")
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise Closed(f"agent exited with status {self.proc.returncode} before dialling {svc}")
        raise NoReply(f"agent did not dial the {svc} socket within {CONNECT_TIMEOUT:g}s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for s, _ in self.servers.values():
            s.close()
        self.servers = {}
        self.log.close()
        if self.ctx.failed > self.failed_before:
            self.failed_before = self.ctx.failed
            with open(self.log_path, "rb") as f:
                tail = f.read().decode("utf-8", "replace").splitlines()[-25:]
            print(f"---- last lines of {self.log_path}\n" + "\n".join("  | " + l for l in tail) + "\n----")


def check_negotiation(ctx, ch, label, offered):
    """Check 1: the answer openvmm accepts (counts 1/1, a version table), plus what Linux's
    vmbus_prep_negotiate_resp guarantees (it only picks versions that were offered; status untouched)."""
    try:
        h, fw, mv = ch.negotiate(offered)
    except (ProtocolError, OSError) as e:
        ctx.check(f"{label}: negotiation", False, f"{type(e).__name__}: {e}")
        return False
    problems = []
    if fw not in FRAMEWORK_VERSIONS or mv not in offered:
        problems.append(f"chose a version that was not offered (framework {fw}, message {mv})")
    if h.status != S_OK:
        problems.append(f"status {h.status:#010x}")
    if h.flags != RESPONSE_FLAGS:
        problems.append(f"flags {h.flags:#04x}, Linux sends exactly {RESPONSE_FLAGS:#04x}")
    note = f"; dropped message types {ch.dropped} first" if ch.dropped else ""
    ctx.check(f"{label}: negotiation", not problems,
              "; ".join(problems) or f"framework {fw[0]}.{fw[1]}, message version {mv[0]}.{mv[1]}{note}")
    return True


def check_pipe(ctx, ch, label):
    """Check 1, second half: every packet the agent sent is a PIPE_PACKET_TYPE_DATA packet, none unasked."""
    try:
        extra = ch.drain()
    except OSError:
        extra = 0
    bad = [(i, t) for i, t in enumerate(ch.pipe_types) if t != PIPE_PACKET_TYPE_DATA]
    problems = []
    if bad:
        problems.append(f"{len(bad)} of {len(ch.pipe_types)} packets have pipe packet type "
                        f"{sorted({t for _, t in bad})} (first: packet {bad[0][0]}); openvmm's "
                        f"PipeReader fails the channel: 'invalid pipe packet type {bad[0][1]:#x}'")
    if extra:
        problems.append(f"{extra} unsolicited message(s) after the last answer")
    ctx.check(f"{label}: pipe packets", not problems,
              "; ".join(problems) or f"{len(ch.pipe_types)} packets, all PIPE_PACKET_TYPE_DATA (1)")
    ch.close()


# ---- time sync (check 2) -----------------------------------------------------------------------------------
def timesync_body(flags):
    # hyperv_ic/src/timesync.rs process_state_machine SendMessage: parent_time = now in 100 ns since 1601,
    # vm_reference_time = the VM's reference time (here CLOCK_BOOTTIME in 100 ns), leap 0, stratum 0.
    parent = time.time_ns() // 100 + EPOCH_DELTA_100NS
    return TS_V4.pack(parent, time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 100, flags, 0, 0, bytes(5))


def timesync_checks(ctx, ch):
    def answer(flags):
        ch.transact(MSG_TIMESYNC, timesync_body(flags))   # blocks until the answer (timeout: FAIL)

    def sync():
        answer(TS_SYNC)   # first message after negotiation: is_sync = true
        return "flags 0x01 answered"

    def samples():
        for i in range(4):
            time.sleep(SAMPLE_PERIOD)   # openvmm sleeps only after the answer, then sends the next sample
            try:
                answer(TS_SAMPLE)
            except ProtocolError as e:
                raise type(e)(f"sample {i + 1}: {e}") from None
        return "4 samples (flags 0x02), each answered before the next was scheduled"

    def odd(flags):
        def run():
            time.sleep(SAMPLE_PERIOD)
            answer(flags)
            return f"flags {flags:#04x} answered"
        return run

    def kept():
        time.sleep(SAMPLE_PERIOD)
        answer(TS_SAMPLE)
        return "a plain SAMPLE after them was answered on the same connection"

    ctx.step("timesync: SYNC answered", sync)
    ctx.step("timesync: SAMPLEs answered", samples)
    ctx.step("timesync: SYNC|SAMPLE flags answered", odd(TS_SYNC | TS_SAMPLE))
    ctx.step("timesync: reserved flag bit answered", odd(TS_SAMPLE | TS_RESERVED_BIT))
    ctx.step("timesync: connection kept", kept)


# ---- heartbeat (check 5) -----------------------------------------------------------------------------------
def heartbeat_checks(ctx, ch):
    def run():
        states = []
        for seq in (0, 1, 41, 2 ** 63, 2 ** 64 - 1):
            _, body = ch.transact(MSG_HEARTBEAT, HB_MSG.pack(seq, 0, bytes(4)))
            if len(body) < HB_MSG.size:
                raise ProtocolError(f"answer body {len(body)} bytes, HeartbeatMessage needs {HB_MSG.size}")
            got, state, _ = HB_MSG.unpack_from(body)
            want = (seq + 1) % 2 ** 64   # hv_util.c heartbeat_onchannelcallback: seq_num += 1 (u64, wraps)
            if got != want:
                raise ProtocolError(f"sent sequence {seq}, answer has {got}, expected {want}")
            if state not in APP_STATES:
                raise ProtocolError(f"application_state {state} is not an ApplicationState")
            states.append(APP_STATES[state])
        return f"5 heartbeats incl. 2^64-1 -> 0; application_state {sorted(set(states))}"
    ctx.step("heartbeat: sequence numbers", run)


# ---- shutdown (check 3) ------------------------------------------------------------------------------------
SHUTDOWN_CASES = [   # (name, ShutdownFlags as openvmm sets them, HVAGENT_SHUTDOWN_ACTION, HVAGENT_SHUTDOWN_FORCE)
    ("poweroff", 0, "poweroff", "0"),
    ("poweroff+force", SD_FORCE, "poweroff", "1"),
    ("reboot", SD_RESTART, "reboot", "0"),
    ("reboot+force", SD_RESTART | SD_FORCE, "reboot", "1"),
    ("hibernate", SD_HIBERNATE, "hibernate", "0"),
]


def read_env(path):
    env = {}
    with open(path, errors="replace") as f:
        for line in f:
            k, sep, v = line.rstrip("\n").partition("=")
            if sep:
                env.setdefault(k, v)
    return env


def wait_for_file(path, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return os.path.exists(path)


def shutdown_scenario(ctx):
    for name, flags, action, force in SHUTDOWN_CASES:
        agent = Agent(ctx, "shutdown-" + name.replace("+", "-"), ["shutdown"])   # fresh agent per request
        label = f"shutdown[{name}]"
        try:
            ch = agent.accept("shutdown")
        except ProtocolError as e:
            ctx.check(f"{label}: agent dialled", False, str(e))
            agent.stop()
            continue
        if check_negotiation(ctx, ch, label, SHUTDOWN_VERSIONS):
            # shutdown.rs SendShutdown: reason SHTDN_REASON_FLAG_PLANNED, timeout 0, flags, message all zero.
            msg = SHUTDOWN_MSG.pack(SHTDN_REASON_FLAG_PLANNED, 0, flags, bytes(2048))
            status = {}

            def request():
                h, _ = ch.transact(MSG_SHUTDOWN, msg, want_status=None)
                status["s"] = h.status
                if h.status != S_OK and action != "hibernate":   # WaitShutdown: SUCCESS is ShutdownResult::Ok
                    raise ProtocolError(f"status {h.status:#010x}: openvmm reports ShutdownResult::Failed")
                return f"flags {flags:#x}, status {h.status:#010x}"

            def command():
                others = [a for a in ("poweroff", "reboot", "hibernate") if a != action]
                path = os.path.join(agent.dir, action + ".env")
                if status.get("s", S_OK) != S_OK:   # a refused hibernation must not run anything
                    time.sleep(1.0)
                    ran = [a for a in ("poweroff", "reboot", "hibernate")
                           if os.path.exists(os.path.join(agent.dir, a + ".env"))]
                    if ran:
                        raise ProtocolError(f"refused (status {status['s']:#010x}) but ran {ran}")
                    return f"refused with status {status['s']:#010x} (ShutdownResult::Failed); nothing ran"
                if not wait_for_file(path, 5.0):
                    raise ProtocolError(f"{action} command did not run within 5 s")
                env = read_env(path)
                got = (env.get("HVAGENT_SHUTDOWN_ACTION"), env.get("HVAGENT_SHUTDOWN_FORCE"))
                if got != (action, force):
                    raise ProtocolError(f"HVAGENT_SHUTDOWN_ACTION/FORCE = {got}, expected {(action, force)}")
                wrong = [a for a in others if os.path.exists(os.path.join(agent.dir, a + ".env"))]
                if wrong:
                    raise ProtocolError(f"also ran {wrong}")
                return (f"ACTION={action} FORCE={force} REASON={env.get('HVAGENT_SHUTDOWN_REASON')!r} "
                        f"MESSAGE={env.get('HVAGENT_SHUTDOWN_MESSAGE')!r}")

            if ctx.step(f"{label}: request answered", request):
                ctx.step(f"{label}: command ran", command)
        check_pipe(ctx, ch, label)
        agent.stop()


# ---- KVP (check 4) -----------------------------------------------------------------------------------------
def write_str(s, max_units):
    """hyperv_ic/src/kvp.rs write_str: UTF-16 units then a NUL; returns (bytes, size incl. the NUL)."""
    raw = s.encode("utf-16-le")
    if len(raw) // 2 >= max_units:
        raise ValueError(f"string too long: {s!r}")
    return raw, len(raw) + 2


def kvp_message(op, pool, body, size=KVP_MESSAGE_SIZE):
    # kvp.rs msg()/msg2(): KvpHeader {operation, pool}, then zeros up to the body at byte 4, zeros to the end.
    m = bytes([op, pool, 0, 0]) + body
    return m + bytes(size - len(m))


def parse_str(arr, n):
    """hyperv_ic/src/kvp.rs parse_str: even size, within the array, last unit NUL, valid UTF-16."""
    if n % 2:
        raise ProtocolError(f"invalid string length {n}")
    if n > len(arr):
        raise ProtocolError(f"string length too large ({n} > {len(arr)})")
    if n == 0 or arr[n - 2:n] != b"\0\0":
        raise ProtocolError(f"missing null terminator (size {n})")
    try:
        return arr[:n - 2].decode("utf-16-le", "strict")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"invalid utf-16 ({e})") from None


def parse_enumerate_response(body):
    """hyperv_ic/src/kvp.rs parse_response::<MessageEnumerate> + parse_enumerate_response."""
    if len(body) < KVP_BODY_OFFSET:
        raise ProtocolError("missing header")
    rec = body[KVP_BODY_OFFSET:]
    if len(rec) < 4 + KVP_VALUE.size:
        raise ProtocolError(f"missing response (body {len(body)} bytes, needs {KVP_BODY_OFFSET + 4 + KVP_VALUE.size})")
    vt, key_size, value_size, key, value = KVP_VALUE.unpack_from(rec, 4)
    k = parse_str(key, key_size)
    if vt == VT_DWORD:
        if value_size != 4:
            raise ProtocolError(f"invalid dword value size {value_size} (key {k!r})")
        return k, ("u32", struct.unpack_from("<I", value)[0])
    if vt == VT_QWORD:
        if value_size != 8:
            raise ProtocolError(f"invalid qword value size {value_size} (key {k!r})")
        return k, ("u64", struct.unpack_from("<Q", value)[0])
    if vt in (VT_STRING, VT_EXPAND_STRING):
        try:
            return k, parse_str(value, value_size)
        except ProtocolError as e:
            raise ProtocolError(f"value of {k!r}: {e}") from None
    raise ProtocolError(f"invalid value type {vt:#x} (key {k!r})")


class Kvp:
    def __init__(self, ch):
        self.ch = ch

    def request(self, op, pool, body, size=KVP_MESSAGE_SIZE):
        self.ch.write_message(MSG_KVP, kvp_message(op, pool, body, size))
        return self.ch.read_response(MSG_KVP)

    def set(self, pool, key, value):
        # kvp.rs KvpRpc::Set: MessageGetSet with write_str(key) and write_value(value).
        k, ks = write_str(key, MAX_KEY_UNITS)
        if isinstance(value, str):
            v, vs = write_str(value, MAX_VALUE_UNITS)
            vt = VT_STRING
        elif value[0] == "u32":
            v, vs, vt = struct.pack("<I", value[1]), 4, VT_DWORD
        else:
            v, vs, vt = struct.pack("<Q", value[1]), 8, VT_QWORD
        return self.request(OP_SET, pool, KVP_VALUE.pack(vt, ks, vs, k, v))[0].status

    def delete(self, pool, key):
        k, ks = write_str(key, MAX_KEY_UNITS)   # kvp.rs KvpRpc::Delete: MessageDelete {key_size, key}
        return self.request(OP_DELETE, pool, struct.pack("<I", ks) + k.ljust(512, b"\0"))[0].status

    def enumerate(self, pool):
        """The host's enumeration (openvmm_entry kvp.rs Enum): index 0, 1, ... until NO_MORE_ITEMS.
        Returns (records, problems); a record openvmm cannot parse fails its channel, listed in problems."""
        records, problems = [], []
        for index in range(1100):   # at most 1,024 pairs per pool, plus slack
            h, body = self.request(OP_ENUMERATE, pool, struct.pack("<I", index) + bytes(KVP_VALUE.size))
            if h.status == NO_MORE_ITEMS:
                return records, problems
            if h.status != S_OK:
                problems.append(f"index {index}: status {h.status:#010x} (openvmm expects SUCCESS or "
                                f"NO_MORE_ITEMS {NO_MORE_ITEMS:#010x} at the end)")
                return records, problems
            try:
                records.append(parse_enumerate_response(body))
            except ProtocolError as e:
                problems.append(f"index {index}: {e}")
                if len(problems) == 3:   # openvmm already failed the channel at the first one
                    problems.append("enumeration stopped")
                    return records, problems
        problems.append("no NO_MORE_ITEMS after 1100 records")
        return records, problems

    def get(self, pool, key):
        """openvmm_entry/src/kvp.rs KvpSubcommand::Get: 'they never implemented the get operation in the guest.
        Enumerate instead.' Returns the first matching value, or None at NO_MORE_ITEMS."""
        for index in range(1100):
            h, body = self.request(OP_ENUMERATE, pool, struct.pack("<I", index) + bytes(KVP_VALUE.size))
            if h.status == NO_MORE_ITEMS:
                return None
            if h.status != S_OK:
                raise ProtocolError(f"enumerate index {index}: status {h.status:#010x}")
            k, v = parse_enumerate_response(body)
            if k == key:
                return v
        raise ProtocolError("no NO_MORE_ITEMS after 1100 records")


def same_value(sent, got):
    if sent == got:
        return True
    # Linux's daemon stores numbers as decimal strings and answers with REG_SZ; openvmm parses that as a string.
    return isinstance(sent, tuple) and got == str(sent[1])


POOL3 = {"ovmm.ae.plain": "auto-external value", "ovmm.ae.unicode": "gr\u00fc\u00dfe \u2713 \U0001F600"}
POOL0 = {"ovmm.ext.string": "external value", "ovmm.ext.dword": ("u32", 3000000000),
         "ovmm.ext.qword": ("u64", 2 ** 40 + 7), "ovmm.ext.delete-me": "bye"}
DELETED = "ovmm.ext.delete-me"


def kvp_first_session(ctx, kvp, label):
    def set_pool(pool, pairs):
        def run():
            bad = [f"{k!r}: status {s:#010x}" for k, s in ((k, kvp.set(pool, k, v)) for k, v in pairs.items())
                   if s != S_OK]
            if bad:
                raise ProtocolError("; ".join(bad))
            return f"{len(pairs)} pairs, all SUCCESS"
        return run

    def enum_pool(pool, pairs, required=(), absent=()):
        def run():
            records, problems = kvp.enumerate(pool)
            found = dict(records)
            for k, v in pairs.items():
                if k not in found:
                    problems.append(f"{k!r} missing")
                elif not same_value(v, found[k]):
                    problems.append(f"{k!r} = {found[k]!r}, set {v!r}")
            problems += [f"{k!r} missing" for k in required if not found.get(k)]
            problems += [f"{k!r} still there" for k in absent if k in found]
            if problems:
                raise ProtocolError("; ".join(problems) + f" ({len(records)} records parsed)")
            return f"{len(records)} records, all parse, ended with NO_MORE_ITEMS: " + \
                ", ".join(f"{k}={v!r}"[:60] for k, v in records[:12])
        return run

    def get_all():
        problems = []
        for pool, pairs in ((POOL_AUTO_EXTERNAL, POOL3), (POOL_EXTERNAL, POOL0)):
            for k, v in pairs.items():
                got = kvp.get(pool, k)
                if got is None or not same_value(v, got):
                    problems.append(f"pool {pool} {k!r}: got {got!r}, set {v!r}")
        if problems:
            raise ProtocolError("; ".join(problems))
        return f"{len(POOL3) + len(POOL0)} keys found with their values"

    def delete():
        s = kvp.delete(POOL_EXTERNAL, DELETED)
        if s != S_OK:
            raise ProtocolError(f"status {s:#010x}")
        got = kvp.get(POOL_EXTERNAL, DELETED)
        if got is not None:
            raise ProtocolError(f"still there after SUCCESS: {got!r}")
        return "SUCCESS, and Get no longer finds it"

    ctx.step(f"{label}: Set in pool 3 (AUTO_EXTERNAL)", set_pool(POOL_AUTO_EXTERNAL, POOL3))
    ctx.step(f"{label}: Set in pool 0 (EXTERNAL): string, DWORD, QWORD", set_pool(POOL_EXTERNAL, POOL0))
    ctx.step(f"{label}: Enumerate pool 3", enum_pool(POOL_AUTO_EXTERNAL, POOL3))
    ctx.step(f"{label}: Enumerate pool 0", enum_pool(POOL_EXTERNAL, POOL0))
    ctx.step(f"{label}: Get (enumerate and match, as openvmm does)", get_all)
    ctx.step(f"{label}: Delete in pool 0", delete)
    # The guest's intrinsic pairs: tools/hv/hv_kvp_daemon.c names the host name FullyQualifiedDomainName.
    ctx.step(f"{label}: Enumerate pool 2 (AUTO)", enum_pool(POOL_AUTO, {}, ("OSName", "FullyQualifiedDomainName")))
    ctx.step(f"{label}: Enumerate pool 1 (GUEST)", enum_pool(POOL_GUEST, {}))
    if kvp.ch.versions[1] >= (5, 0):
        ctx.step(f"{label}: GetIpInfo (binary, v5)", lambda: get_ip_info(kvp))
    else:
        print(f"NOTE {label}: GetIpInfo not sent: openvmm's prepare_get_ip_info needs KVP 5.0, "
              f"negotiated {kvp.ch.versions[1]}")


def get_ip_info(kvp):
    """kvp.rs prepare_get_ip_info (KvpMessage2, GET_IP_ADDRESS_INFO, pool GUEST, adapter_id = MAC) and
    parse_ip_info_response. A non-SUCCESS status fails only the request; a bad SUCCESS answer the channel."""
    macs = []
    for n in sorted(os.listdir("/sys/class/net")):
        try:
            with open(f"/sys/class/net/{n}/address") as f:
                mac = f.read().strip()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            macs.append(mac)
    adapter = macs[0] if macs else "00:15:5d:00:00:01"
    raw, _ = write_str(adapter, 128)
    binary = bytearray(IPINFO_BINARY_SIZE)
    binary[24:24 + len(raw)] = raw                       # adapter_id [u16; 128] after six u32 counts
    h, body = kvp.request(OP_GET_IP_INFO, POOL_GUEST, bytes(binary), KVP_MESSAGE2_SIZE)
    if h.status != S_OK:
        return f"adapter {adapter}: status {h.status:#010x} (openvmm fails just this request)"
    rec = body[KVP_BODY_OFFSET:]
    if len(rec) < IPINFO_BINARY_SIZE:
        raise ProtocolError(f"missing response (body {len(body)} bytes, needs {KVP_BODY_OFFSET + IPINFO_BINARY_SIZE})")
    v4, v6, gw4, gw6, dns4, dns6 = struct.unpack_from("<6I", rec)
    # parse_ip_info_response: origins [u16; 128] split at v4 then v6; address/subnet/dns arrays of 64,
    # gateway arrays of 5.
    limits = [("ipv4 address", v4, 64), ("ipv6 address", v6, 64), ("ipv4 gateway", gw4, 5),
              ("ipv6 gateway", gw6, 5), ("ipv4 dns server", dns4, 64), ("ipv6 dns server", dns6, 64),
              ("address origin", v4 + v6, 128)]
    bad = [f"invalid {what} count {n}" for what, n, cap in limits if n > cap]
    if bad:
        raise ProtocolError("; ".join(bad))
    return f"adapter {adapter}: {v4} IPv4 / {v6} IPv6 addresses, {gw4}+{gw6} gateways, {dns4}+{dns6} DNS"


def kvp_scenario(ctx):
    state_dir = os.path.join(ctx.tmp, "kvp-state")
    for round_ in (1, 2):
        label = "kvp" if round_ == 1 else "kvp[after restart]"
        agent = Agent(ctx, f"kvp-{round_}", ["guestinfo"], state_dir)
        try:
            ch = agent.accept("guestinfo")
        except ProtocolError as e:
            ctx.check(f"{label}: agent dialled", False, str(e))
            agent.stop()
            continue
        if check_negotiation(ctx, ch, label, KVP_VERSIONS):
            kvp = Kvp(ch)
            if round_ == 1:
                kvp_first_session(ctx, kvp, label)
            else:
                def survived():
                    want = [(POOL_AUTO_EXTERNAL, "ovmm.ae.plain", POOL3["ovmm.ae.plain"]),
                            (POOL_EXTERNAL, "ovmm.ext.string", POOL0["ovmm.ext.string"])]
                    bad = [f"pool {p} {k!r}: {kvp.get(p, k)!r}" for p, k, v in want
                           if not same_value(v, kvp.get(p, k))]
                    if kvp.get(POOL_EXTERNAL, DELETED) is not None:
                        bad.append(f"deleted {DELETED!r} is back")
                    if bad:
                        raise ProtocolError("; ".join(bad))
                    return "pool 3 and pool 0 keys kept their values, the deleted key stayed deleted"
                ctx.step(f"{label}: pairs survived the restart", survived)
        check_pipe(ctx, ch, label)
        agent.stop()


def timesync_heartbeat_scenario(ctx):
    agent = Agent(ctx, "timesync-heartbeat", ["timesync", "heartbeat"])
    for svc, versions, checks in (("timesync", TIMESYNC_VERSIONS, timesync_checks),
                                  ("heartbeat", HEARTBEAT_VERSIONS, heartbeat_checks)):
        try:
            ch = agent.accept(svc)
        except ProtocolError as e:
            ctx.check(f"{svc}: agent dialled", False, str(e))
            continue
        if check_negotiation(ctx, ch, svc, versions):
            checks(ctx, ch)
        check_pipe(ctx, ch, svc)
    agent.stop()


DUMP = "--dump" in sys.argv


def main():
    args = [a for a in sys.argv[1:] if a not in ("--keep", "--dump")]
    if len(args) != 1:
        sys.exit(__doc__.split("\n\n")[1])
    binary = os.path.abspath(args[0])
    if not os.access(binary, os.X_OK):
        sys.exit(f"not an executable: {binary}")
    ctx = Ctx(binary, tempfile.mkdtemp(prefix="ovmm-"))
    print(f"openvmm-interop: host side as openvmm {OPENVMM_COMMIT} does it; agent {binary}; temp {ctx.tmp}")
    start = time.monotonic()
    try:
        for scenario in (timesync_heartbeat_scenario, shutdown_scenario, kvp_scenario):
            try:
                scenario(ctx)
            except (ProtocolError, OSError) as e:
                ctx.check(f"{scenario.__name__}", False, f"aborted: {type(e).__name__}: {e}")
    finally:
        for agent in ctx.agents:
            if agent.servers or agent.proc.poll() is None:
                agent.stop()
        if "--keep" in sys.argv:
            print(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    print(f"openvmm-interop: {ctx.passed} passed, {ctx.failed} failed ({time.monotonic() - start:.1f}s)")
    sys.exit(1 if ctx.failed else 0)


if __name__ == "__main__":
    main()
