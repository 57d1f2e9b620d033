"""Configuration-driven behaviour seen through real clients: access lists, rules by name and
user, mixed authentication methods, SOCKS4 switched off, the per-user session limit and the
graceful drain on SIGTERM."""

import os
import select
import signal
import socket
import subprocess
import time
import uuid

import pytest
import socks

from interop_support import (
    CURL_PROXY_ERROR,
    IO_TIMEOUT,
    LOOPBACK_ALLOW,
    PASSWORD,
    SOCKSNGD,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    USER,
    clean_env,
    curl,
    exchange,
    proxy_config,
    sha256,
    to_toml,
    recv_exact,
)


def blob(host, port):
    tag = uuid.uuid4().hex
    return f"http://{host}:{port}/blob?tag={tag}", tag


def pysocks_stream(proxy, **kw):
    s = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    s.set_proxy(socks.SOCKS5, proxy.host, proxy.port, **kw)
    s.settimeout(IO_TIMEOUT)
    return s


def socks5_error(sock, dest):
    try:
        sock.connect(dest)
    except socks.ProxyError as e:
        while isinstance(e, socks.GeneralProxyError) and isinstance(e.socket_err, socks.ProxyError):
            e = e.socket_err
        return e
    raise AssertionError(f"connect to {dest} through the proxy succeeded")


def test_client_outside_access_list_is_dropped(start_proxy, http_target, tmp_path):
    p = start_proxy(name="acl", clients=["192.0.2.0/24"])
    url, tag = blob("127.0.0.1", http_target.port)
    r = curl("--socks5", p.hostport, url, output=tmp_path / "b")
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert http_target.tagged(tag) == []
    s = p.wait_session(outcome="client network not allowed")
    assert s["client"].startswith("127.0.0.1:")


def test_domain_rule_denies_name_but_not_address(start_proxy, http_target, tmp_path):
    deny_localhost = {"action": "deny", "domains": ["localhost"]}
    p = start_proxy(name="domain-rule", rules=[deny_localhost, LOOPBACK_ALLOW])
    url, tag = blob("localhost", http_target.port)
    r = curl("--socks5-hostname", p.hostport, url, output=tmp_path / "b")
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert http_target.tagged(tag) == []
    s = p.wait_session(target=f"localhost:{http_target.port}")
    assert s["outcome"] == "connection not allowed by ruleset: denied by rules[0]", s
    # The typed outcome behind the words: a refusal, the policy's doing, reply 0x02.
    assert (s["outcome_kind"], s["side"], s["reply"]) == ("refused", "policy", "2"), s
    assert s["connected"] == "-"

    url, tag = blob("127.0.0.1", http_target.port)
    r = curl("--socks5", p.hostport, url, output=tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert sha256((tmp_path / "b").read_bytes()) == http_target.sha256
    assert len(http_target.tagged(tag)) == 1


def test_both_methods_and_user_rule(start_proxy, users_file, http_target, tmp_path):
    """With "none" and "password" both accepted, a client offering both logs in; one that
    offers only "none" is anonymous. A rule limited to the user opens loopback only to her,
    and a wrong password does not fall back to anonymous."""
    alice_only = {"action": "allow", "users": [USER], "to": ["127.0.0.0/8", "::1/128"]}
    p = start_proxy(name="mixed", methods=["none", "password"], users_file=users_file, rules=[alice_only])
    out = tmp_path / "b"

    url, tag = blob("127.0.0.1", http_target.port)
    r = curl("-x", f"socks5://{USER}:{PASSWORD}@{p.hostport}", url, output=out)
    assert r.returncode == 0, r.stderr
    assert sha256(out.read_bytes()) == http_target.sha256
    assert len(http_target.tagged(tag)) == 1
    p.wait_session(user=USER, command="connect", outcome="closed")

    url, tag = blob("127.0.0.1", http_target.port)
    mark = p.log.mark()
    r = curl("--socks5", p.hostport, url, output=out)
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert http_target.tagged(tag) == []
    s = p.wait_session(user="-", command="connect", start=mark)
    assert "destination is on the proxy host" in s["outcome"], s

    url, tag = blob("127.0.0.1", http_target.port)
    mark = p.log.mark()
    r = curl("-x", f"socks5://{USER}:wrong@{p.hostport}", url, output=out)
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert http_target.tagged(tag) == []
    s = p.wait_session(user=USER, start=mark)
    assert s["command"] == "-" and "authentication failed" in s["outcome"], s


def test_socks4_disabled(start_proxy, http_target, tmp_path):
    p = start_proxy(name="nosocks4", socks4=False)
    url, tag = blob("127.0.0.1", http_target.port)
    r = curl("--socks4", p.hostport, url, output=tmp_path / "b")
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert http_target.tagged(tag) == []
    s = p.wait_session(command="-")
    assert "SOCKS4" in s["outcome"], s
    # SOCKS5 on the same server still works.
    url, tag = blob("127.0.0.1", http_target.port)
    r = curl("--socks5", p.hostport, url, output=tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert len(http_target.tagged(tag)) == 1


def test_per_user_session_limit(start_proxy, users_file, echo_target):
    p = start_proxy(
        name="limit",
        methods=["password"],
        users_file=users_file,
        extra={"limits": {"max_sessions_per_user": 1}},
    )
    creds = {"username": USER, "password": PASSWORD}
    first = pysocks_stream(p, **creds)
    with first:
        first.connect(("127.0.0.1", echo_target.port))
        first.sendall(b"held")
        assert recv_exact(first, 4) == b"held"

        with pysocks_stream(p, **creds) as second:
            e = socks5_error(second, ("127.0.0.1", echo_target.port))
        assert isinstance(e, socks.SOCKS5Error) and str(e).startswith("0x02"), repr(e)
        s = p.wait_session(user=USER, outcome="connection not allowed by ruleset: per-user session limit reached")
        assert s["command"] == "connect"

        assert exchange(first, b"done") == b"done"
    # The slot is free once the first session's line is logged (it is written after the
    # session has released everything).
    p.wait_session(user=USER, outcome="closed")
    with pysocks_stream(p, **creds) as third:
        third.connect(("127.0.0.1", echo_target.port))
        assert exchange(third, b"again") == b"again"


def test_sigterm_drains_running_session(start_proxy, echo_target):
    """After SIGTERM the listener closes but a running session keeps working; the server
    exits 0 as soon as it ends, well before the (long) grace period."""
    p = start_proxy(name="drain", timeouts={"shutdown_grace": "60s"})
    s = pysocks_stream(p)
    with s:
        s.connect(("127.0.0.1", echo_target.port))
        s.sendall(b"before")
        assert recv_exact(s, 6) == b"before"

        p.proc.send_signal(signal.SIGTERM)
        p.log.wait_for(lambda line: "shutting down: draining sessions" in line, what="drain line")

        # New connections are refused once the accept loop has dropped its listener. Poll
        # (bounded) since that happens just after the drain line, in another task.
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            assert time.monotonic() < deadline, "the listener still accepts after SIGTERM"
            try:
                socket.create_connection((p.host, p.port), timeout=IO_TIMEOUT).close()
            except ConnectionRefusedError:
                break

        payload = os.urandom(100_000)
        assert exchange(s, payload) == payload
    rc = p.proc.wait(STOP_TIMEOUT)
    assert rc == 0
    p.stop()
    text = p.log.text()
    assert "shutdown complete" in text
    assert "grace period over" not in text
    sess = p.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert sess["outcome"] == "closed"
    assert (sess["outcome_kind"], sess["side"], sess["reply"]) == ("completed", "client", "0")
    assert sess["bytes_up"] == str(6 + len(payload))


def test_loopback_in_disguise_refused(start_proxy, echo_target):
    """IPv4-mapped loopback and the unspecified addresses reach this host too. By default all
    are refused with 0x02; allowing 127.0.0.0/8 opens the mapped form (same address) but not
    0.0.0.0 or ::, which must be named explicitly."""
    port = echo_target.port
    before = len(echo_target.peers)
    p = start_proxy(name="default", rules=[])
    for host in ("::ffff:127.0.0.1", "0.0.0.0", "::"):
        with pysocks_stream(p) as s:
            e = socks5_error(s, (host, port))
        assert isinstance(e, socks.SOCKS5Error) and str(e).startswith("0x02"), (host, e)
    assert len(echo_target.peers) == before

    q = start_proxy(name="loopback-allowed")
    for host in ("0.0.0.0", "::"):
        with pysocks_stream(q) as s:
            e = socks5_error(s, (host, port))
        assert isinstance(e, socks.SOCKS5Error) and str(e).startswith("0x02"), (host, e)
    assert len(echo_target.peers) == before
    with pysocks_stream(q) as s:
        s.connect(("::ffff:127.0.0.1", port))
        assert exchange(s, b"mapped") == b"mapped"
    assert len(echo_target.peers) == before + 1


def test_pipelined_request_and_data(proxy, echo_target):
    """A client may send greeting, request and first data in one write without waiting for
    the replies (no-auth "optimistic" clients do); the data must reach the target."""
    request = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
    request += echo_target.port.to_bytes(2, "big") + b"early-data"
    with socket.create_connection((proxy.host, proxy.port), timeout=IO_TIMEOUT) as c:
        reply = exchange(c, request)
    assert reply[:2] == b"\x05\x00"  # method: no authentication
    assert reply[2:6] == b"\x05\x00\x00\x01"  # succeeded, IPv4 bound address
    assert reply[12:] == b"early-data"
    s = proxy.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert (s["bytes_up"], s["bytes_down"], s["outcome"]) == ("10", "10", "closed")


def test_sigterm_with_stderr_closed(tmp_path):
    """A log reader that goes away (`socksngd ... 2>&1 | head`, a dead log collector) must
    not make socksngd deaf to SIGTERM."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(proxy_config()))
    proc = subprocess.Popen(
        [str(SOCKSNGD), "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        seen = b""
        while b"accepting SOCKS connections" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, seen
            if select.select([proc.stderr], [], [], remaining)[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, f"socksngd exited: {seen!r}"
                seen += chunk
        proc.stderr.close()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(5)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, "socksngd did not exit after SIGTERM with its stderr closed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
