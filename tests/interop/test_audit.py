"""socksngd's audit log (`[audit]`): one JSON object per line for every session (written when
it ends), failed logins and the SOCKS-NG listener and token events.

- A mixed run (CONNECTs anonymous and logged in, SOCKS4, refusals by rule and by the target,
  failed logins over SOCKS5 and NG-HELLO, a protocol error, UDP ASSOCIATE through PySocks, a
  SOCKS-NG UDP tunnel, CAPABILITIES, and a LISTEN with a claimed, a refused and an expired
  token, an incoming connection refused by rule and claims that fail) leaves exactly one
  session record per connection made, with the fields right, and the listener's events.
- Rotation by rename and SIGUSR1 (and SIGHUP) while sessions run in a loop loses no record and
  writes none twice.
- A sink that does not take data (a FIFO nobody reads) does not slow the relay: records are
  dropped and counted instead, and records seen + dropped counts == sessions made.

The server is stopped (SIGTERM) before the file is read, so everything queued is written.
"""

import fcntl
import json
import os
import re
import signal
import socket
import select
import struct
import threading
import time

import socks

from interop_support import (
    IO_TIMEOUT,
    LOOPBACK_ALLOW,
    PASSWORD,
    SOCKSNGD,
    STOP_TIMEOUT,
    USER,
    encode_addr,
    exchange,
    proxy_config,
    read_addr,
    read_jsonl,
    recv_exact,
    run,
    socks5_open,
    socksngd_passwd,
    wait_session_count,
)

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

SESSION_FIELDS = {
    "time", "event", "session", "start", "duration_ms", "user", "authenticated", "client",
    "tls", "command", "target", "connected", "via", "class", "bytes_up", "bytes_down",
    "outcome", "side", "reply", "detail",
}
OUTCOMES = {"completed", "refused", "handshake-failed", "protocol-error", "timed-out", "broken", "cut"}
SIDES = {"client", "target", "policy", "internal"}
COMMANDS = {
    "connect", "bind", "udp", "socks4-connect", "listen", "accept", "udp-tunnel",
    "capabilities", "-",
}
EVENT_FIELDS = {
    "login-failed": {"session", "user", "client", "tls", "reason"},
    "listener-opened": {"session", "listener", "user", "client", "address", "via"},
    "token-announced": {"listener", "token", "peer"},
    "token-claimed": {"session", "listener", "token", "user", "client", "peer"},
    "token-refused": {"listener", "token"},
    "token-expired": {"listener", "token"},
    "incoming-refused": {"listener", "peer", "reason"},
    "dropped": {"count"},
}


def hostport(addr):
    host, port = addr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_common(rec):
    assert TIME_RE.match(rec["time"]), rec
    if rec["event"] == "session":
        assert set(rec) == SESSION_FIELDS, sorted(set(rec) ^ SESSION_FIELDS)
        assert TIME_RE.match(rec["start"]), rec
        assert rec["start"] <= rec["time"], rec
        assert isinstance(rec["session"], int) and rec["session"] > 0, rec
        assert isinstance(rec["duration_ms"], int) and rec["duration_ms"] >= 0, rec
        assert isinstance(rec["authenticated"], bool) and isinstance(rec["tls"], bool), rec
        assert rec["command"] in COMMANDS, rec
        assert rec["outcome"] in OUTCOMES and rec["side"] in SIDES, rec
        assert rec["reply"] is None or isinstance(rec["reply"], int), rec
        assert isinstance(rec["bytes_up"], int) and isinstance(rec["bytes_down"], int), rec
        assert isinstance(rec["detail"], str), rec
        # null until service classes name one (no [[classes]] in these configurations).
        assert rec["class"] is None or isinstance(rec["class"], str), rec
    else:
        assert rec["event"] in EVENT_FIELDS, rec
        assert set(rec) == EVENT_FIELDS[rec["event"]] | {"time", "event"}, rec


# --------------------------------------------------------------------------------------------
# SOCKS-NG by hand (docs/draft-socksng.md)


def ng_open(proxy, user=None, password=None):
    """A connection that negotiated SOCKS-NG (method X'A5', NG-HELLO); returns (socket,
    NG-WELCOME status)."""
    s = socket.create_connection((proxy.host, proxy.port), timeout=IO_TIMEOUT)
    s.sendall(b"\x05\x02\xa5\x00")
    assert recv_exact(s, 2) == b"\x05\xa5"
    if user is None:
        s.sendall(b"\x01\x00\x00\x00")
    else:
        u, p = user.encode(), password.encode()
        data = bytes([len(u)]) + u + bytes([len(p)]) + p
        s.sendall(b"\x01\x02" + struct.pack(">H", len(data)) + data)
    welcome = recv_exact(s, 3)
    assert welcome[0] == 1, welcome
    return s, welcome[1]


def reply(sock):
    head = recv_exact(sock, 3)
    assert head[0] == 5, head
    return head[1], read_addr(sock)


def echoed_session(proxy, echo_port, payload):
    """One anonymous CONNECT to the echo target that sends `payload` and checks it comes back."""
    s = socket.create_connection((proxy.host, proxy.port), timeout=IO_TIMEOUT)
    with s:
        s.sendall(b"\x05\x01\x00\x05\x01\x00" + encode_addr("127.0.0.1", echo_port))
        assert recv_exact(s, 2) == b"\x05\x00"
        assert reply(s)[0] == 0
        assert exchange(s, payload) == payload


def read_to_eof(sock):
    """Bytes until EOF; a reset counts as the end too. Returns (data, reset)."""
    chunks = []
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return b"".join(chunks), False
            chunks.append(d)
    except ConnectionResetError:
        return b"".join(chunks), True


class Control:
    """The client's end of a LISTEN control connection."""

    def __init__(self, sock):
        self.sock = sock

    def next(self):
        """The next message other than PING (answered) and PONG: (type, body)."""
        while True:
            t = recv_exact(self.sock, 1)[0]
            if t == 1:  # ACCEPT-NOTICE
                token = recv_exact(self.sock, 16)
                return t, (token, read_addr(self.sock))
            if t in (2, 3):
                return t, recv_exact(self.sock, 16)
            if t == 4:
                return t, recv_exact(self.sock, 10)
            if t == 5:
                self.sock.sendall(b"\x06" + recv_exact(self.sock, 4))
                continue
            if t == 6:
                recv_exact(self.sock, 4)
                continue
            if t == 7:
                return t, recv_exact(self.sock, 1)
            raise AssertionError(f"unknown control message type {t}")

    def expect(self, want):
        t, body = self.next()
        assert t == want, (t, body)
        return body


# --------------------------------------------------------------------------------------------
# 1. Every session of a mixed run


def test_mixed_run_every_session_recorded(start_proxy, tmp_path, echo_target, udp_target):
    users = tmp_path / "users"
    socksngd_passwd(users, USER, PASSWORD)
    # A port nothing listens on (the target refuses) and one the rules deny.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    denied_port = closed_port + 1 if closed_port < 65535 else closed_port - 1
    admin_sock = tmp_path / "admin.sock"
    cfg = proxy_config(
        methods=["none", "password"],
        users_file=users,
        rules=[
            {"action": "deny", "to": ["127.0.0.0/8"], "ports": [denied_port]},
            # Incoming LISTEN peers are judged as BIND peers: this one is kept out.
            {"action": "deny", "to": ["127.0.0.9/32"], "commands": ["bind"]},
            LOOPBACK_ALLOW,
        ],
        extra={
            "ng": {"token_lifetime": "1s"},
            "audit": {"file": "audit.jsonl"},
            "admin": {"socket": str(admin_sock)},
        },
    )
    p = start_proxy(cfg, name="audit-mixed")
    p.log.wait_for(lambda l: "admin control socket ready" in l or None, what="admin socket")
    # Expected session records by client address; fields as they must read.
    want = {}

    def made(sock, **fields):
        want[hostport(sock.getsockname())] = fields
        return sock

    echo = ("127.0.0.1", echo_target.port)
    echo_str = f"127.0.0.1:{echo_target.port}"

    # CONNECT, anonymous, data echoed.
    s, rep = socks5_open(p, *echo)
    assert rep == 0
    assert exchange(s, b"x" * 1000) == b"x" * 1000
    made(s, command="connect", user="127.0.0.1", authenticated=False, target=echo_str,
         connected=echo_str, via="direct", outcome="completed",
         bytes_up=1000, bytes_down=1000)
    s.close()

    # CONNECT by name, logged in.
    s, rep = socks5_open(p, "localhost", echo_target.port, USER, PASSWORD)
    assert rep == 0
    assert exchange(s, b"y" * 300) == b"y" * 300
    made(s, command="connect", user=USER, authenticated=True,
         target=f"localhost:{echo_target.port}", via="direct", outcome="completed",
         bytes_up=300, bytes_down=300)
    s.close()

    # SOCKS4 CONNECT through PySocks.
    s4 = socks.socksocket()
    s4.set_proxy(socks.SOCKS4, p.host, p.port)
    s4.settimeout(IO_TIMEOUT)
    s4.connect(echo)
    assert exchange(s4, b"four") == b"four"
    made(s4, command="socks4-connect", user="127.0.0.1", authenticated=False,
         target=echo_str, connected=echo_str, outcome="completed", bytes_up=4, bytes_down=4)
    s4.close()

    # Refused by rule, and by the target.
    s, rep = socks5_open(p, "127.0.0.1", denied_port)
    assert rep == 2
    made(s, command="connect", target=f"127.0.0.1:{denied_port}", connected=None,
         outcome="refused", side="policy", reply=2)
    s.close()
    s, rep = socks5_open(p, "127.0.0.1", closed_port)
    assert rep == 5
    made(s, command="connect", target=f"127.0.0.1:{closed_port}", connected=None,
         outcome="refused", side="target", reply=5)
    s.close()

    # Failed logins: RFC 1929 and NG-HELLO.
    s, rep = socks5_open(p, *echo, user=USER, password="wrong")
    assert rep == 0x101
    failed_logins = {hostport(s.getsockname())}
    made(s, command="-", authenticated=False, outcome="handshake-failed", target=None)
    s.close()
    s, status = ng_open(p, USER, "wrong-too")
    assert status == 1
    failed_logins.add(hostport(s.getsockname()))
    made(s, command="-", authenticated=False, outcome="handshake-failed", target=None)
    s.close()

    # Not SOCKS at all.
    s = socket.create_connection((p.host, p.port), timeout=IO_TIMEOUT)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    read_to_eof(s)
    not_socks = hostport(s.getsockname())
    made(s, command="-", target=None, side="client")
    s.close()

    # UDP ASSOCIATE through PySocks.
    u = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    u.set_proxy(socks.SOCKS5, p.host, p.port)
    u.settimeout(IO_TIMEOUT)
    u.sendto(b"assoc", ("127.0.0.1", udp_target.port))
    data, _ = u.recvfrom(4096)
    assert data == b"ECHO assoc"
    made(u._proxyconn, command="udp", user="127.0.0.1", authenticated=False,
         outcome="completed")
    u.close()

    # The SOCKS-NG UDP tunnel, logged in.
    t, status = ng_open(p, USER, PASSWORD)
    assert status == 0
    t.sendall(b"\x05\x14\x00")
    assert reply(t)[0] == 0
    t.sendall(struct.pack(">H", 6) + encode_addr("127.0.0.1", udp_target.port) + b"tunnel")
    n = struct.unpack(">H", recv_exact(t, 2))[0]
    assert read_addr(t) == ("127.0.0.1", udp_target.port)
    assert recv_exact(t, n) == b"ECHO tunnel"
    made(t, command="udp-tunnel", user=USER, authenticated=True, outcome="completed")
    t.close()

    # CAPABILITIES, anonymous.
    c, status = ng_open(p)
    assert status == 0
    c.sendall(b"\x05\x11\x00")
    assert reply(c)[0] == 0
    read_to_eof(c)
    made(c, command="capabilities", user="127.0.0.1", authenticated=False, outcome="completed")
    c.close()

    # LISTEN: one token claimed, one refused, one expired; a peer the rules keep out.
    ctl_sock, status = ng_open(p, USER, PASSWORD)
    assert status == 0
    ctl_sock.sendall(b"\x05\x12\x00" + encode_addr("127.0.0.1", 0) + b"\x00\x00\x04")
    rep, announced = reply(ctl_sock)
    assert rep == 0 and announced[0] == "127.0.0.1", (rep, announced)
    ctl = Control(ctl_sock)
    backlog, lifetime, idle = struct.unpack(">HII", ctl.expect(4))
    assert lifetime == 1, lifetime

    r = run([SOCKSNGD, "--config", p.config_path, "sessions", "--json"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.decode().splitlines() if line]
    listen_rows = [row for row in rows if row["command"] == "listen"]
    assert len(listen_rows) == 1, rows
    listen_id = listen_rows[0]["id"]

    peer_a = socket.create_connection(announced, timeout=IO_TIMEOUT)
    peer_a.sendall(b"from A")
    tok_a, peer_addr = ctl.expect(1)
    assert peer_addr == peer_a.getsockname()[:2], (peer_addr, peer_a.getsockname())
    claim, status = ng_open(p, USER, PASSWORD)
    assert status == 0
    claim.sendall(b"\x05\x13\x00" + tok_a)
    rep, got_peer = reply(claim)
    assert rep == 0 and got_peer == peer_addr, (rep, got_peer)
    assert recv_exact(claim, 6) == b"from A"
    claim.sendall(b"to A")
    assert recv_exact(peer_a, 4) == b"to A"
    peer_a.shutdown(socket.SHUT_WR)
    assert read_to_eof(claim) == (b"", False)
    claim.shutdown(socket.SHUT_WR)
    assert read_to_eof(peer_a) == (b"", False)
    made(claim, command="accept", user=USER, authenticated=True, connected=hostport(peer_addr),
         outcome="completed", bytes_up=4, bytes_down=6)
    claim.close()
    peer_a.close()

    peer_b = socket.create_connection(announced, timeout=IO_TIMEOUT)
    tok_b, _ = ctl.expect(1)
    ctl_sock.sendall(b"\x03" + tok_b)
    assert read_to_eof(peer_b)[0] == b""
    peer_b.close()

    peer_c = socket.create_connection(announced, timeout=IO_TIMEOUT)
    peer_c.sendall(b"waiting")  # a peer with data is not gone: its token expires
    tok_c, peer_c_addr = ctl.expect(1)
    assert ctl.expect(2) == tok_c  # EXPIRED, after the one-second lifetime
    assert read_to_eof(peer_c)[0] == b""
    peer_c.close()

    # Claims that fail: an expired token and a made-up one.
    for token in (tok_c, os.urandom(16)):
        bad, status = ng_open(p, USER, PASSWORD)
        assert status == 0
        bad.sendall(b"\x05\x13\x00" + token)
        assert reply(bad)[0] == 0x0C
        read_to_eof(bad)
        made(bad, command="accept", user=USER, authenticated=True, outcome="refused",
             reply=0x0C, connected=None)
        bad.close()

    mark = p.log.mark()
    peer_d = socket.socket()
    peer_d.settimeout(IO_TIMEOUT)
    peer_d.bind(("127.0.0.9", 0))
    peer_d.connect(announced)
    p.log.wait_for(
        lambda l: "incoming connection refused by policy" in l and "from=127.0.0.9:" in l,
        start=mark, what="the refusal of the peer from 127.0.0.9",
    )
    assert read_to_eof(peer_d)[0] == b""
    peer_d_addr = hostport(peer_d.getsockname())
    peer_d.close()

    made(ctl_sock, command="listen", user=USER, authenticated=True,
         target="127.0.0.1:0", connected=hostport(announced), via="direct",
         outcome="completed")
    ctl_sock.close()

    # Every session has ended once its line is logged; then stop, so all is written.
    wait_session_count(p, len(want))
    assert p.stop() == 0
    audit = tmp_path / "audit.jsonl"
    assert (os.stat(audit).st_mode & 0o777) == 0o600
    records = read_jsonl(audit)
    problems = []
    for rec in records:
        try:
            check_common(rec)
        except AssertionError as e:
            problems.append(f"{rec['event']} record of {rec.get('client')}: {e}")
    sessions = [r for r in records if r["event"] == "session"]
    by_client = {}
    for rec in sessions:
        assert rec["client"] not in by_client, f"two records for {rec['client']}"
        by_client[rec["client"]] = rec
    assert sorted(by_client) == sorted(want), (sorted(by_client), sorted(want))
    ids = [r["session"] for r in sessions]
    assert len(set(ids)) == len(ids), ids
    for client, fields in want.items():
        rec = by_client[client]
        for k, v in fields.items():
            if rec[k] != v:
                problems.append(f"{client} {fields.get('command')}: {k} = {rec[k]!r}, want {v!r}")
        if rec["tls"] is not False:
            problems.append(f"{client}: tls {rec['tls']!r}")
    named = [r for r in sessions if str(r["target"]).startswith("localhost:")]
    assert len(named) == 1, named
    named = named[0]
    assert named["connected"] in (f"127.0.0.1:{echo_target.port}", f"[::1]:{echo_target.port}"), named
    udp = [r for r in sessions if r["command"] in ("udp", "udp-tunnel")]
    for rec in udp:
        if rec["bytes_up"] < 5 or rec["bytes_down"] < 10:
            problems.append(f"{rec['command']}: bytes {rec['bytes_up']}/{rec['bytes_down']}")
    if by_client[not_socks]["outcome"] not in ("handshake-failed", "protocol-error"):
        problems.append(f"not SOCKS: outcome {by_client[not_socks]['outcome']!r}")
    assert not problems, "\n".join(problems)

    # The session id is the one `socksngd sessions` showed.
    listen_recs = [r for r in sessions if r["command"] == "listen"]
    assert len(listen_recs) == 1 and listen_recs[0]["session"] == listen_id, (listen_recs, listen_id)

    def events(name):
        return [r for r in records if r["event"] == name]

    fails = events("login-failed")
    assert sorted(r["client"] for r in fails) == sorted(failed_logins), fails
    for r in fails:
        assert r["user"] == USER and r["tls"] is False and r["reason"], r
        # Its session record follows, with the same id.
        assert by_client[r["client"]]["session"] == r["session"], r
        assert records.index(r) < records.index(by_client[r["client"]]), r

    opened = events("listener-opened")
    assert len(opened) == 1, opened
    op = opened[0]
    lid = op["listener"]
    assert isinstance(lid, int), op
    assert op["session"] == listen_id and op["user"] == USER, op
    assert op["address"] == hostport(announced) and op["via"] == "direct", op
    assert op["client"] == listen_recs[0]["client"], op

    announced_recs = events("token-announced")
    assert [r["token"] for r in announced_recs] == [t[:4].hex() for t in (tok_a, tok_b, tok_c)], announced_recs
    assert all(r["listener"] == lid and re.fullmatch(r"[0-9a-f]{8}", r["token"]) for r in announced_recs)
    assert announced_recs[0]["peer"] == hostport(peer_addr), announced_recs
    assert announced_recs[2]["peer"] == hostport(peer_c_addr), announced_recs

    claimed = events("token-claimed")
    assert len(claimed) == 1, claimed
    claim_rec = [r for r in sessions if r["command"] == "accept" and r["outcome"] == "completed"][0]
    assert claimed[0] == {**claimed[0], "listener": lid, "token": tok_a[:4].hex(), "user": USER,
                          "session": claim_rec["session"], "client": claim_rec["client"],
                          "peer": hostport(peer_addr)}, claimed
    assert [(r["listener"], r["token"]) for r in events("token-refused")] == [(lid, tok_b[:4].hex())]
    assert [(r["listener"], r["token"]) for r in events("token-expired")] == [(lid, tok_c[:4].hex())]
    refused_in = events("incoming-refused")
    assert len(refused_in) == 1 and refused_in[0]["listener"] == lid, refused_in
    assert refused_in[0]["peer"] == peer_d_addr and refused_in[0]["reason"], refused_in
    assert not events("dropped")


# --------------------------------------------------------------------------------------------
# 2. Rotation under load


def test_rotation_under_load_loses_nothing(start_proxy, tmp_path, echo_target):
    cfg = proxy_config(extra={"audit": {"file": "audit.jsonl"}})
    p = start_proxy(cfg, name="audit-rotate")
    audit = tmp_path / "audit.jsonl"
    stop = threading.Event()
    lock = threading.Lock()
    made = [0]
    errors = []
    payload = os.urandom(2000)

    def worker():
        while not stop.is_set():
            try:
                with lock:
                    made[0] += 1
                echoed_session(p, echo_target.port, payload)
            except Exception as e:  # reported by the main thread
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    rotated = []
    try:
        start = p.log.mark()
        wait_session_count(p, 30, start=start)
        for n, sig in enumerate((signal.SIGUSR1, signal.SIGUSR1, signal.SIGHUP), 1):
            # The current file exists once a record went to it: wait for sessions until then.
            for _ in range(50):
                if audit.exists():
                    break
                start = p.log.mark()
                wait_session_count(p, 10, start=start)
            assert audit.exists()
            target = tmp_path / f"audit.{n}"
            os.rename(audit, target)
            rotated.append(target)
            mark = p.log.mark()
            p.proc.send_signal(sig)
            word = "SIGUSR1 received" if sig == signal.SIGUSR1 else "configuration reloaded"
            p.log.wait_for(lambda l: word in l or None, start=mark, what=word)
            # More sessions end after the reopen, into the new file.
            wait_session_count(p, 30, start=p.log.mark())
            assert not errors, errors
    finally:
        stop.set()
        for t in threads:
            t.join(IO_TIMEOUT * 2)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    wait_session_count(p, made[0])
    assert p.stop() == 0
    files = rotated + [audit]
    ids = []
    for f in files:
        recs = read_jsonl(f)
        assert recs, f"{f.name} is empty"
        for r in recs:
            check_common(r)
            assert r["event"] == "session", r
            assert r["outcome"] == "completed", r
        ids += [r["session"] for r in recs]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    assert not dups, f"records written twice: {dups}"
    assert len(ids) == made[0], f"{len(ids)} records for {made[0]} sessions"
    print(f"{made[0]} sessions over {len(files)} files")


# --------------------------------------------------------------------------------------------
# 3. A sink that does not take data


SESSIONS = 400


def test_blocked_sink_does_not_slow_the_relay(start_proxy, tmp_path, echo_target):
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    # The reading end first, so that the writer's open does not wait; never read until the
    # end. The smallest pipe, so that it fills soon.
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(rfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
        cfg = proxy_config(extra={"audit": {"file": str(fifo), "queue": 16}})
        p = start_proxy(cfg, name="audit-fifo")
        payload = os.urandom(1024)
        lock = threading.Lock()
        made = [0]
        errors = []
        todo = list(range(SESSIONS))

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                try:
                    # Every operation within the normal IO timeout, or the session fails.
                    with lock:
                        made[0] += 1
                    echoed_session(p, echo_target.port, payload)
                except Exception as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "sessions hung"
        assert not errors, errors[:5]
        assert made[0] == SESSIONS
        wait_session_count(p, SESSIONS)

        # Stop, then read the FIFO to its end: the writer writes out what it still holds.
        p.proc.send_signal(signal.SIGTERM)
        data = b""
        deadline = time.monotonic() + STOP_TIMEOUT + 5
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the FIFO did not reach its end"
            ready, _, _ = select.select([rfd], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
        assert p.stop() == 0
    finally:
        os.close(rfd)
    records = [json.loads(line) for line in data.decode().splitlines() if line]
    for r in records:
        check_common(r)
    sessions = [r for r in records if r["event"] == "session"]
    dropped = [r["count"] for r in records if r["event"] == "dropped"]
    assert len(sessions) + len(dropped) == len(records), records
    ids = [r["session"] for r in sessions]
    assert len(set(ids)) == len(ids)
    print(f"{len(sessions)} records written, dropped records: {dropped}")
    assert sum(dropped) > 0, "the sink never blocked: nothing to test"
    assert len(sessions) + sum(dropped) == SESSIONS, (len(sessions), dropped)


# --------------------------------------------------------------------------------------------
# 4. Syslog


def test_syslog_and_file_together_refused(tmp_path):
    # Records sent to syslog cannot be observed here without taking over /dev/log; only the
    # configuration rule is checked.
    cfg = tmp_path / "both.toml"
    cfg.write_text('listen = ["127.0.0.1:0"]\n[audit]\nfile = "a.jsonl"\nsyslog = true\n')
    r = run([SOCKSNGD, "check", "--config", cfg])
    assert r.returncode != 0
    assert b"not both" in r.stderr, r.stderr
