"""Configuration-driven behaviour seen through real clients: access lists, rules by name and
user, mixed authentication methods, SOCKS4 switched off, the per-user session limit and the
graceful drain on SIGTERM."""

import os
import signal
import socket
import time
import uuid

import socks

from interop_support import (
    CURL_PROXY_ERROR,
    IO_TIMEOUT,
    LOOPBACK_ALLOW,
    PASSWORD,
    STOP_TIMEOUT,
    USER,
    curl,
    exchange,
    sha256,
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


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


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
    assert sess["bytes_up"] == str(6 + len(payload))
