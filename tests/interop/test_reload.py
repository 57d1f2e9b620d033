"""Live reload on SIGHUP: socksngd reads its --config file again. Users and passwords, rules,
routes and limits apply to new sessions; running sessions keep what they started with, unless
`[reload] recheck_sessions = true`, which ends those the new configuration refuses. A file with
errors is refused with the reason, and the configuration in force stays.

Each reload is confirmed by its log line ("configuration reloaded: new sessions follow it" or
"configuration reload refused") before the test goes on.
"""

import os
import re
import signal
import socket
import socketserver

import pytest

from interop_support import (
    IO_TIMEOUT,
    LOOPBACK_ALLOW,
    PASSWORD,
    USER,
    TcpTarget,
    exchange,
    proxy_config,
    read_jsonl,
    run,
    recv_exact,
    sha256,
    socks5_login,
    socks5_open,
    socks5_request,
    socksngd_passwd,
    to_toml,
)

RELOADED = "configuration reloaded: new sessions follow it"
REFUSED = "configuration reload refused"
RESTART = "these changed settings keep their old values until a restart"
CUT_PREFIX = "refused by the reloaded configuration: "

NEW_PASSWORD = "n3w-battery-staple"
BLOB_SIZE = 32 << 20  # more than every socket buffer on the way can hold


class _SendBlob(socketserver.BaseRequestHandler):
    """Sends the target's blob (each send bounded by IO_TIMEOUT, so a reader that pauses is
    fine), half-closes, then waits for the client's end."""

    def handle(self):
        owner = self.server.owner
        sock = self.request
        sock.settimeout(IO_TIMEOUT)
        view = memoryview(owner.blob)
        while view:
            n = sock.send(view[:65536])
            view = view[n:]
        owner.sent_all.append(True)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


@pytest.fixture(scope="module")
def blob_target():
    t = TcpTarget(_SendBlob)
    t.blob = os.urandom(BLOB_SIZE)
    t.sent_all = []
    yield t
    t.close()


def reload(proxy, cfg=None):
    """Writes `cfg` (a dict or TOML text) over the proxy's config file, sends SIGHUP and
    returns (the log line that says how the reload went, the log position before it)."""
    if cfg is not None:
        proxy.config_path.write_text(cfg if isinstance(cfg, str) else to_toml(cfg))
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    return proxy.log.wait_for(
        lambda line: (RELOADED in line or REFUSED in line) and line,
        start=mark,
        what="the reload's outcome",
    ), mark


def expect_reload(proxy, cfg, expect):
    line, mark = reload(proxy, cfg)
    assert expect in line, line
    return line, mark


def count_exchange(sock, payload):
    """Through a CONNECT to count_target: returns (bytes, sha256) the target saw."""
    answer = exchange(sock, payload).decode().split()
    return int(answer[0]), answer[1]


def expect_reset(sock):
    """The client sees a reset (not an orderly end)."""
    with pytest.raises(ConnectionResetError):
        while sock.recv(65536):
            pass


# --------------------------------------------------------------------------------------------
# 1. New sessions follow the new users and rules; a running transfer completes byte-exact


def test_password_and_rule_apply_to_new_sessions_transfer_survives(
    start_proxy, tmp_path, blob_target, echo_target, count_target
):
    users = tmp_path / "users"
    socksngd_passwd(users, USER, PASSWORD)
    base = dict(methods=["password"], users_file=users, socks4=False)
    p = start_proxy(proxy_config(**base), name="reload-users")

    # A session to the port the new rules will deny, running across the reload.
    held, rep = socks5_open(p, "127.0.0.1", echo_target.port, USER, PASSWORD)
    assert rep == 0
    held.sendall(b"before")
    assert recv_exact(held, 6) == b"before"

    # A large download, started now and paused: a small receive buffer, read in part.
    dl = socket.socket()
    dl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    dl.settimeout(IO_TIMEOUT)
    dl.connect((p.host, p.port))
    assert socks5_login(dl, USER, PASSWORD) == 0
    assert socks5_request(dl, 1, "127.0.0.1", blob_target.port)[0] == 0
    dl_client = "127.0.0.1:%d" % dl.getsockname()[1]
    first = recv_exact(dl, 256 * 1024)

    # The password changes in the users file, and a rule denies the echo port.
    socksngd_passwd(users, USER, NEW_PASSWORD)
    new = proxy_config(
        **base,
        rules=[{"action": "deny", "to": ["127.0.0.0/8"], "ports": [echo_target.port]}, LOOPBACK_ALLOW],
    )
    line, mark = expect_reload(p, new, RELOADED)
    assert "sessions_ended=0" in line, line
    assert not [l for l in p.log.lines()[mark:] if RESTART in l], p.log.text()
    # The transfer is still going: the target has not sent everything yet.
    assert not blob_target.sent_all, "the download ended before the reload: nothing tested"

    # New sessions: the old password fails, the new one works; the echo port is denied.
    s, rep = socks5_open(p, "127.0.0.1", count_target.port, USER, PASSWORD)
    assert rep == 0x101, rep
    s.close()
    s, rep = socks5_open(p, "127.0.0.1", count_target.port, USER, NEW_PASSWORD)
    assert rep == 0, rep
    assert count_exchange(s, b"z" * 5000) == (5000, sha256(b"z" * 5000))
    s.close()
    s, rep = socks5_open(p, "127.0.0.1", echo_target.port, USER, NEW_PASSWORD)
    assert rep == 2, rep
    s.close()
    p.wait_session(start=mark, command="connect", target=f"127.0.0.1:{echo_target.port}",
                   reply=2, outcome_kind="refused")

    # The running session keeps the rules it started with.
    held.sendall(b"after")
    assert recv_exact(held, 5) == b"after"
    held.close()

    # The download completes, byte-exact.
    chunks = [first]
    while True:
        d = dl.recv(1 << 20)
        if not d:
            break
        chunks.append(d)
    dl.close()
    body = b"".join(chunks)
    assert len(body) == BLOB_SIZE
    assert sha256(body) == sha256(blob_target.blob)
    s = p.wait_session(start=mark, client=dl_client)
    assert s["outcome_kind"] == "completed" and s["bytes_down"] == str(BLOB_SIZE), s


# --------------------------------------------------------------------------------------------
# 2. A broken configuration is refused; the old one stays in force


def test_broken_config_refused_old_rules_stay(start_proxy, tmp_path, echo_target, count_target):
    deny_echo = {"action": "deny", "to": ["127.0.0.0/8"], "ports": [echo_target.port]}
    p = start_proxy(proxy_config(rules=[deny_echo, LOOPBACK_ALLOW]), name="reload-broken")

    def old_rules_in_force():
        s, rep = socks5_open(p, "127.0.0.1", echo_target.port)
        assert rep == 2, "the old deny rule is gone"
        s.close()
        s, rep = socks5_open(p, "127.0.0.1", count_target.port)  # no login: old auth
        assert rep == 0, rep
        assert count_exchange(s, b"ok") == (2, sha256(b"ok"))
        s.close()

    old_rules_in_force()
    # Every broken file would drop the deny rule if it were taken.
    opened = proxy_config()
    bad_users = tmp_path / "bad-users"
    bad_users.write_text("this is not a users file\n")
    both_sinks = dict(opened, audit={"file": "a.jsonl", "syslog": True})
    bad_net = to_toml(opened).replace('"127.0.0.0/8"', '"127.0.0.0/33"')
    bad_net_line = [i for i, l in enumerate(bad_net.splitlines(), 1) if "/33" in l][0]
    cases = [
        ("bad TOML", to_toml(opened) + "\n[rules\n", "TOML parse error"),
        # The line of the reason; the TOML error's own words follow on the next log lines.
        ("a bad net", bad_net, f"TOML parse error at line {bad_net_line},"),
        ("invalid combination", to_toml(both_sinks), "not both"),
        ("users file", to_toml(proxy_config(methods=["password"], users_file=bad_users)),
         "bad-users"),
    ]
    for what, text, reason in cases:
        line, mark = expect_reload(p, text, REFUSED)
        assert " ERROR " in line, (what, line)
        assert reason in line, (what, reason, line)
        assert not [l for l in p.log.lines()[mark:] if RELOADED in l], (what, p.log.text())
        old_rules_in_force()

    # A good file is then taken.
    expect_reload(p, opened, RELOADED)
    s, rep = socks5_open(p, "127.0.0.1", echo_target.port)
    assert rep == 0
    assert exchange(s, b"open now") == b"open now"
    s.close()


def test_settings_needing_a_restart_are_named(start_proxy, echo_target):
    p = start_proxy(proxy_config(), name="reload-restart")
    changed = proxy_config(listen=("127.0.0.1:0", "127.0.0.2:0"))
    line, mark = expect_reload(p, changed, RELOADED)
    warn = [l for l in p.log.lines()[mark:] if RESTART in l]
    assert len(warn) == 1 and " WARN " in warn[0] and "listen" in warn[0], p.log.text()
    s, rep = socks5_open(p, "127.0.0.1", echo_target.port)
    assert rep == 0
    assert exchange(s, b"same listener") == b"same listener"
    s.close()


# --------------------------------------------------------------------------------------------
# 3. recheck_sessions: running sessions the new configuration refuses are ended


def test_recheck_ends_refused_sessions_keeps_allowed(start_proxy, tmp_path, echo_target, count_target):
    users = tmp_path / "users"
    socksngd_passwd(users, USER, PASSWORD)
    socksngd_passwd(users, "bob", "bobs-password")
    base = dict(methods=["password"], users_file=users, socks4=False)
    extra = {"reload": {"recheck_sessions": True}, "audit": {"file": "audit.jsonl"}}
    p = start_proxy(proxy_config(**base, extra=extra), name="reload-recheck")

    def opened(user, password, port, source=None):
        s, rep = socks5_open(p, "127.0.0.1", port, user, password, source=source)
        assert rep == 0, rep
        return s, "%s:%d" % s.getsockname()[:2]

    # Denied destination, still allowed, removed user, client network no longer allowed.
    a, a_client = opened(USER, PASSWORD, echo_target.port)
    b, b_client = opened(USER, PASSWORD, count_target.port)
    c, c_client = opened("bob", "bobs-password", count_target.port)
    d, d_client = opened(USER, PASSWORD, count_target.port, source="127.0.0.5")
    a.sendall(b"ping")
    assert recv_exact(a, 4) == b"ping"
    b.sendall(b"x" * 1000)
    for s in (c, d):
        s.sendall(b"data")

    users.write_text("".join(l for l in users.read_text().splitlines(True) if not l.startswith("bob:")))
    new = proxy_config(
        **base,
        clients=("127.0.0.1/32", "::1/128"),
        rules=[{"action": "deny", "to": ["127.0.0.0/8"], "ports": [echo_target.port]}, LOOPBACK_ALLOW],
        extra=extra,
    )
    line, mark = expect_reload(p, new, RELOADED)
    assert "sessions_ended=3" in line, line

    for s in (a, c, d):
        expect_reset(s)
        s.close()
    cut = {}
    for client in (a_client, c_client, d_client):
        s = p.wait_session(start=mark, client=client)
        assert s["outcome_kind"] == "cut", s
        assert s["outcome"].startswith(CUT_PREFIX), s
        cut[client] = s

    # The allowed session goes on to its end.
    b.sendall(b"y" * 1000)
    assert count_exchange(b, b"") == (2000, sha256(b"x" * 1000 + b"y" * 1000))
    b.close()
    s = p.wait_session(start=mark, client=b_client)
    assert s["outcome_kind"] == "completed", s

    # New sessions follow the new users file.
    s, rep = socks5_open(p, "127.0.0.1", count_target.port, "bob", "bobs-password")
    assert rep == 0x101, rep
    s.close()

    assert p.stop() == 0
    records = {r["client"]: r for r in read_jsonl(tmp_path / "audit.jsonl") if r["event"] == "session"}
    for client in (a_client, c_client, d_client):
        r = records[client]
        assert r["outcome"] == "cut", r
        assert r["detail"].startswith(CUT_PREFIX), r
        print(client, r["side"], r["detail"])
    assert records[b_client]["outcome"] == "completed", records[b_client]
    assert records[b_client]["bytes_up"] == 2000, records[b_client]


def test_discovery_documents_follow_a_reload(start_proxy):
    """/proxy.pac and /.well-known/pvd are built from the configuration in force: a reload
    that changes the served ranges changes them, with the HTTP listener kept."""
    def cfg(served):
        return proxy_config(extra={"ng": {"served": [{"to": [served]}]},
                                   "discovery": {"http": "127.0.0.1:0"}})

    p = start_proxy(cfg("10.0.0.0/8"))
    line = p.log.wait_for(lambda l: "serving /.well-known/pvd" in l and l, what="the HTTP line")
    base = "http://" + re.search(r"http=(\S+)", line).group(1)

    def fetch(path):
        r = run(["curl", "-q", "-sS", "--fail", "--max-time", "10", base + path])
        assert r.returncode == 0, r.stderr
        return r.stdout.decode()

    assert '"10.0.0.0"' in fetch("/proxy.pac")
    expect_reload(p, to_toml(cfg("172.16.0.0/12")), RELOADED)
    pac, pvd = fetch("/proxy.pac"), fetch("/.well-known/pvd")
    assert '"172.16.0.0"' in pac and '"10.0.0.0"' not in pac, pac
    assert "172.16.0.0/12" in pvd and "10.0.0.0/8" not in pvd, pvd
