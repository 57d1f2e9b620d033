"""Real SOCKS clients (curl, OpenBSD netcat, PySocks) against a real socksngd on loopback.

Each positive test checks the payload end to end and that socksngd's session log recorded the
session (so a client that silently went direct would fail); each negative test checks the
client's error and that the target never saw the request.
"""

import os
import socket
import uuid

import pytest
import socks

from interop_support import (
    CURL_PROXY_ERROR,
    IO_TIMEOUT,
    PASSWORD,
    USER,
    SOCKSNGD,
    curl,
    exchange,
    ipv6_loopback_available,
    proxy_config,
    run,
    sha256,
    to_toml,
)


def new_tag():
    return uuid.uuid4().hex


def assert_downloaded(r, out, target, tag, family="ipv4"):
    assert r.returncode == 0, f"curl failed ({r.returncode}): {r.stderr.decode(errors='replace')}"
    body = out.read_bytes()
    assert len(body) == len(target.body)
    assert sha256(body) == target.sha256
    seen = target.tagged(tag)
    assert [x["family"] for x in seen] == [family], seen


def assert_refused_by_curl(r, target, tag):
    assert r.returncode == CURL_PROXY_ERROR, (
        f"curl exit {r.returncode}, wanted {CURL_PROXY_ERROR}: "
        f"{r.stderr.decode(errors='replace')}"
    )
    assert target.tagged(tag) == [], "the target was reached although the proxy refused"


def blob_url(host, port, tag):
    return f"http://{host}:{port}/blob?tag={tag}"


# --------------------------------------------------------------------------------------------
# socksngd check / passwd


def test_check_accepts_valid_config_and_rejects_invalid(tmp_path, users_file):
    assert users_file.stat().st_mode & 0o777 == 0o600  # `socksngd passwd` creates it private
    assert users_file.read_text().startswith(f"{USER}:$argon2id$")
    good = tmp_path / "good.toml"
    good.write_text(to_toml(proxy_config(methods=["password"], users_file=users_file)))
    r = run([SOCKSNGD, "check", "--config", good])
    assert r.returncode == 0, r.stderr
    assert b"configuration OK" in r.stdout
    assert b"1 user(s)" in r.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml(proxy_config(methods=["password"])))  # no users_file
    r = run([SOCKSNGD, "check", "--config", bad])
    assert r.returncode != 0
    assert b"users_file" in r.stderr


# --------------------------------------------------------------------------------------------
# curl


def test_curl_socks5_ip_target(proxy, http_target, tmp_path):
    tag, out = new_tag(), tmp_path / "body"
    url = blob_url("127.0.0.1", http_target.port, tag)
    r = curl("--socks5", proxy.hostport, url, output=out)
    assert_downloaded(r, out, http_target, tag)
    s = proxy.wait_session(target=f"127.0.0.1:{http_target.port}")
    assert s["user"] == "-"
    assert s["command"] == "connect"
    assert s["connected"] == f"127.0.0.1:{http_target.port}"
    assert s["outcome"] == "closed"
    assert int(s["bytes_down"]) > len(http_target.body)  # body plus HTTP headers
    assert int(s["bytes_up"]) > 0


def test_curl_socks5_hostname_resolved_by_proxy(proxy, http_target, tmp_path):
    tag, out = new_tag(), tmp_path / "body"
    r = curl("--socks5-hostname", proxy.hostport, blob_url("localhost", http_target.port, tag), output=out)
    assert r.returncode == 0, r.stderr
    body = out.read_bytes()
    assert sha256(body) == http_target.sha256
    assert len(http_target.tagged(tag)) == 1
    # The name itself went to the proxy (ATYP 0x03), not an address curl resolved.
    s = proxy.wait_session(target=f"localhost:{http_target.port}")
    assert s["command"] == "connect"
    assert s["outcome"] == "closed"
    assert s["connected"].endswith(f":{http_target.port}")


def test_curl_socks5h_with_password(password_proxy, http_target, tmp_path):
    tag, out = new_tag(), tmp_path / "body"
    proxy_url = f"socks5h://{USER}:{PASSWORD}@{password_proxy.hostport}"
    r = curl("-x", proxy_url, blob_url("localhost", http_target.port, tag), output=out)
    assert r.returncode == 0, r.stderr
    assert sha256(out.read_bytes()) == http_target.sha256
    assert len(http_target.tagged(tag)) == 1
    s = password_proxy.wait_session(target=f"localhost:{http_target.port}")
    assert s["user"] == USER
    assert s["command"] == "connect"
    assert s["outcome"] == "closed"


def test_curl_wrong_password_fails(password_proxy, http_target, tmp_path):
    tag = new_tag()
    proxy_url = f"socks5h://{USER}:not-{PASSWORD}@{password_proxy.hostport}"
    r = curl("-x", proxy_url, blob_url("localhost", http_target.port, tag), output=tmp_path / "b")
    assert_refused_by_curl(r, http_target, tag)
    s = password_proxy.wait_session(user=USER)
    assert s["command"] == "-"
    assert s["target"] == "-"
    assert "auth" in s["outcome"].lower(), s


def test_curl_unknown_user_fails(password_proxy, http_target, tmp_path):
    tag = new_tag()
    proxy_url = f"socks5h://mallory:{PASSWORD}@{password_proxy.hostport}"
    r = curl("-x", proxy_url, blob_url("localhost", http_target.port, tag), output=tmp_path / "b")
    assert_refused_by_curl(r, http_target, tag)
    password_proxy.wait_session(user="mallory", command="-")


def test_curl_without_credentials_rejected_by_password_server(password_proxy, http_target, tmp_path):
    tag = new_tag()
    r = curl(
        "--socks5-hostname",
        password_proxy.hostport,
        blob_url("localhost", http_target.port, tag),
        output=tmp_path / "b",
    )
    assert_refused_by_curl(r, http_target, tag)
    s = password_proxy.wait_session(user="-")
    assert s["command"] == "-"


def test_curl_socks4(proxy, http_target, tmp_path):
    tag, out = new_tag(), tmp_path / "body"
    r = curl("--socks4", proxy.hostport, blob_url("127.0.0.1", http_target.port, tag), output=out)
    assert_downloaded(r, out, http_target, tag)
    s = proxy.wait_session(target=f"127.0.0.1:{http_target.port}")
    assert s["command"] == "socks4-connect"
    assert s["outcome"] == "closed"


def test_curl_socks4a(proxy, http_target, tmp_path):
    tag, out = new_tag(), tmp_path / "body"
    r = curl("--socks4a", proxy.hostport, blob_url("localhost", http_target.port, tag), output=out)
    assert r.returncode == 0, r.stderr
    assert sha256(out.read_bytes()) == http_target.sha256
    assert len(http_target.tagged(tag)) == 1
    s = proxy.wait_session(target=f"localhost:{http_target.port}")
    assert s["command"] == "socks4-connect"
    assert s["outcome"] == "closed"


def test_curl_socks4_refused_by_password_server(password_proxy, http_target, tmp_path):
    tag = new_tag()
    r = curl(
        "--socks4", password_proxy.hostport, blob_url("127.0.0.1", http_target.port, tag),
        output=tmp_path / "b",
    )
    assert_refused_by_curl(r, http_target, tag)


def test_curl_ipv6_target(proxy, http6_target, tmp_path):
    tag, out, hdr = new_tag(), tmp_path / "body", tmp_path / "headers"
    r = curl("--socks5", proxy.hostport, blob_url("[::1]", http6_target.port, tag), output=out, headers=hdr)
    assert_downloaded(r, out, http6_target, tag, family="ipv6")
    assert "x-listener: ipv6" in hdr.read_text().lower()
    s = proxy.wait_session(target=f"[::1]:{http6_target.port}")
    assert s["connected"] == f"[::1]:{http6_target.port}"
    assert s["outcome"] == "closed"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this host has no IPv6 loopback")
def test_proxy_listening_on_ipv6(start_proxy, http_target, tmp_path):
    p = start_proxy(name="v6listen", listen=["[::1]:0"])
    assert p.host == "::1"
    tag, out = new_tag(), tmp_path / "body"
    r = curl("--socks5", p.hostport, blob_url("127.0.0.1", http_target.port, tag), output=out)
    assert_downloaded(r, out, http_target, tag)
    s = p.wait_session(target=f"127.0.0.1:{http_target.port}")
    assert s["client"].startswith("[::1]:")


def test_loopback_destinations_refused_by_default(start_proxy, http_target, tmp_path):
    """Without an allow rule naming them, destinations on the proxy host get reply 0x02
    (SSRF guard), whether asked by address or by a name that resolves to loopback."""
    p = start_proxy(name="default-policy", rules=[{"action": "allow"}])  # catch-all allow
    port = http_target.port
    cases = [
        ("--socks5", blob_url("127.0.0.1", port, new_tag()), f"127.0.0.1:{port}"),
        ("--socks5-hostname", blob_url("localhost", port, new_tag()), f"localhost:{port}"),
        ("--socks4", blob_url("127.0.0.1", port, new_tag()), f"127.0.0.1:{port}"),
    ]
    if http_target.has_ipv6:
        cases.append(("--socks5", blob_url("[::1]", port, new_tag()), f"[::1]:{port}"))
    for option, url, target in cases:
        tag = url.rsplit("=", 1)[1]
        mark = p.log.mark()
        r = curl(option, p.hostport, url, output=tmp_path / "b")
        assert_refused_by_curl(r, http_target, tag)
        s = p.wait_session(target=target, start=mark)
        assert s["command"] == ("socks4-connect" if option == "--socks4" else "connect")
        assert s["outcome"].startswith("connection not allowed by ruleset"), s
        assert "destination is on the proxy host" in s["outcome"], s


# --------------------------------------------------------------------------------------------
# OpenBSD netcat


def nc(proxy, host, port, data, version="5"):
    argv = ["nc", "-N", "-w", "10", "-X", version, "-x", proxy.hostport, host, str(port)]
    return run(argv, input=data)


def test_nc_socks5_echo(proxy, echo_target):
    data = os.urandom(256 * 1024)
    r = nc(proxy, "127.0.0.1", echo_target.port, data)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == len(data)
    assert r.stdout == data
    s = proxy.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert s["command"] == "connect"
    assert s["bytes_up"] == str(len(data))
    assert s["bytes_down"] == str(len(data))
    assert s["outcome"] == "closed"


def test_nc_half_close_reaches_target(proxy, count_target):
    """The target answers only after EOF: nc's shutdown(SHUT_WR) must travel through the
    proxy while the reverse direction stays open for the answer."""
    data = os.urandom(100_000)
    r = nc(proxy, "127.0.0.1", count_target.port, data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"{len(data)} {sha256(data)}\n"
    s = proxy.wait_session(target=f"127.0.0.1:{count_target.port}")
    assert s["bytes_up"] == str(len(data))
    assert s["outcome"] == "closed"


def test_nc_socks5_hostname(proxy, echo_target):
    data = b"hello by name\n" * 100
    r = nc(proxy, "localhost", echo_target.port, data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    # OpenBSD nc sends the name (ATYP 0x03) for the proxy to resolve.
    s = proxy.wait_session(target=f"localhost:{echo_target.port}")
    assert s["bytes_up"] == s["bytes_down"] == str(len(data))


def test_nc_socks4_echo(proxy, echo_target):
    data = os.urandom(64 * 1024)
    r = nc(proxy, "127.0.0.1", echo_target.port, data, version="4")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    s = proxy.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert s["command"] == "socks4-connect"


def test_nc_refused_target_port(proxy, echo_target):
    # A port on loopback nobody listens on (bound and closed: refused at once).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    r = nc(proxy, "127.0.0.1", dead, b"x")
    assert r.returncode != 0
    assert r.stdout == b""
    s = proxy.wait_session(target=f"127.0.0.1:{dead}")
    assert s["outcome"].startswith("connection refused"), s


# --------------------------------------------------------------------------------------------
# PySocks


def pysocks_stream(proxy, **kw):
    s = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    s.set_proxy(socks.SOCKS5, proxy.host, proxy.port, **kw)
    s.settimeout(IO_TIMEOUT)
    return s


def connect_error(sock, dest):
    """The SOCKS-level error a PySocks connect fails with. PySocks wraps its own
    SOCKS5Error/SOCKS5AuthError in GeneralProxyError("Socket error", ...); unwrap it."""
    with pytest.raises(socks.ProxyError) as excinfo:
        sock.connect(dest)
    e = excinfo.value
    while isinstance(e, socks.GeneralProxyError) and isinstance(e.socket_err, socks.ProxyError):
        e = e.socket_err
    return e


def test_pysocks_connect_no_auth(proxy, echo_target):
    payload = os.urandom(300_000)
    with pysocks_stream(proxy) as s:
        s.connect(("127.0.0.1", echo_target.port))
        bound = s.get_proxy_sockname()
        assert s.get_peername() == ("127.0.0.1", echo_target.port)
        assert exchange(s, payload) == payload
    # BND.ADDR/BND.PORT is the proxy's end of the target connection: the peer the target saw.
    assert tuple(bound) in echo_target.peers
    s = proxy.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert (s["bytes_up"], s["bytes_down"]) == (str(len(payload)), str(len(payload)))


@pytest.mark.parametrize("rdns", [True, False], ids=["remote-dns", "local-dns"])
def test_pysocks_connect_with_password(password_proxy, echo_target, rdns):
    payload = os.urandom(50_000)
    with pysocks_stream(password_proxy, rdns=rdns, username=USER, password=PASSWORD) as s:
        s.connect(("localhost", echo_target.port))
        assert exchange(s, payload) == payload
    # rdns: the name goes to the proxy; otherwise PySocks resolves it and sends an address.
    s = password_proxy.wait_session(user=USER, command="connect")
    if rdns:
        assert s["target"] == f"localhost:{echo_target.port}"
    else:
        assert s["target"] in (f"127.0.0.1:{echo_target.port}", f"[::1]:{echo_target.port}")
    assert s["outcome"] == "closed"


def test_session_log_user_and_command(password_proxy, echo_target):
    payload = b"ping" * 1000
    with pysocks_stream(password_proxy, username=USER, password=PASSWORD) as s:
        s.connect(("127.0.0.1", echo_target.port))
        assert exchange(s, payload) == payload
    s = password_proxy.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert s["user"] == USER
    assert s["command"] == "connect"
    assert s["client"].startswith("127.0.0.1:")
    assert s["connected"] == f"127.0.0.1:{echo_target.port}"
    assert (s["bytes_up"], s["bytes_down"]) == (str(len(payload)), str(len(payload)))
    assert s["outcome"] == "closed"


def test_pysocks_wrong_password(password_proxy, echo_target):
    before = len(echo_target.peers)
    with pysocks_stream(password_proxy, username=USER, password="wrong") as s:
        e = connect_error(s, ("127.0.0.1", echo_target.port))
    assert isinstance(e, socks.SOCKS5AuthError), repr(e)
    assert "authentication failed" in str(e)
    password_proxy.wait_session(user=USER, command="-")
    assert len(echo_target.peers) == before


def test_pysocks_no_credentials_for_password_server(password_proxy, echo_target):
    with pysocks_stream(password_proxy) as s:
        e = connect_error(s, ("127.0.0.1", echo_target.port))
    # The server answered the method selection with 0xFF.
    assert isinstance(e, socks.SOCKS5AuthError), repr(e)
    assert "rejected" in str(e)


def test_pysocks_loopback_refused_by_default_with_0x02(start_proxy, echo_target):
    p = start_proxy(name="default-policy", rules=[])
    before = len(echo_target.peers)
    for host in ("127.0.0.1", "localhost"):
        with pysocks_stream(p) as s:
            e = connect_error(s, (host, echo_target.port))
        assert isinstance(e, socks.SOCKS5Error), repr(e)
        assert str(e).startswith("0x02"), str(e)
    assert len(echo_target.peers) == before


def test_pysocks_deny_rule_by_port(start_proxy, echo_target, count_target):
    """First matching rule wins: a deny on the echo port beats the later loopback allow."""
    rules = [{"action": "deny", "ports": [echo_target.port]}, {"action": "allow", "to": ["127.0.0.0/8"]}]
    p = start_proxy(name="deny-port", rules=rules)
    with pysocks_stream(p) as s:
        e = connect_error(s, ("127.0.0.1", echo_target.port))
    assert isinstance(e, socks.SOCKS5Error), repr(e)
    assert str(e).startswith("0x02"), str(e)
    s = p.wait_session(target=f"127.0.0.1:{echo_target.port}")
    assert "rules[0]" in s["outcome"], s
    with pysocks_stream(p) as s:
        s.connect(("127.0.0.1", count_target.port))
        assert exchange(s, b"abc") == f"3 {sha256(b'abc')}\n".encode()


@pytest.mark.parametrize(
    "auth,rdns",
    [(False, True), (True, True), (False, False)],
    ids=["no-auth", "password", "no-auth-local-dns"],
)
def test_pysocks_udp_associate(request, udp_target, auth, rdns):
    """PySocks sends UDP ASSOCIATE naming its UDP port, with the host as the name "0"
    (rdns) or as 0.0.0.0 (local DNS); names in datagrams go to the proxy only with rdns."""
    p = request.getfixturevalue("password_proxy" if auth else "proxy")
    creds = {"username": USER, "password": PASSWORD} if auth else {}
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, p.host, p.port, rdns=rdns, **creds)
    s.settimeout(IO_TIMEOUT)
    before = len(udp_target.received)
    sizes = [1, 100, 1400, 8000, 30000]
    with s:
        s.bind(("127.0.0.1", 0))  # sends UDP ASSOCIATE
        local = s.getsockname()
        for i, size in enumerate(sizes):
            payload = f"{i}:".encode() + os.urandom(size)
            s.sendto(payload, ("127.0.0.1", udp_target.port))
            data, src = s.recvfrom(65536)
            assert src == ("127.0.0.1", udp_target.port)
            assert data == b"ECHO " + payload
        # A name resolved by the proxy (ATYP 0x03 in the UDP header).
        s.sendto(b"by-name", ("localhost", udp_target.port))
        data, src = s.recvfrom(65536)
        assert data == b"ECHO by-name"
        # localhost may resolve to ::1 first (then the reply header carries ATYP 0x04).
        assert src in (("127.0.0.1", udp_target.port), ("::1", udp_target.port))
        expected = len(sizes) + 1
        if len(udp_target.socks) == 2:
            # An IPv6 destination over the IPv4 association (ATYP 0x04 both ways).
            s.sendto(b"to-v6", ("::1", udp_target.port))
            data, src = s.recvfrom(65536)
            assert (data, src) == (b"ECHO to-v6", ("::1", udp_target.port))
            expected += 1
    got = udp_target.received[before:]
    assert len(got) == expected
    # The target heard the proxy's relay socket, not the client's own socket.
    assert all(src != local for src, _ in got)
    session = p.wait_session(command="udp")
    assert session["user"] == (USER if auth else "-")
    assert session["target"] == f"{'0' if rdns else '0.0.0.0'}:{local[1]}"
    assert session["outcome"] == (
        f"control connection closed; datagrams up {expected} down {expected} dropped 0"
    ), session


def test_pysocks_udp_policy_applies_per_datagram(start_proxy, udp_target):
    """UDP datagrams go through the same policy as CONNECT: with loopback allowed only for
    the echo port, a datagram to another loopback port is dropped, never reaching it.
    The relay handles datagrams in order, so once the echo of the allowed datagram sent
    after it is back, the refused one has been dealt with: no waiting for a non-event."""
    allow_echo_only = {"action": "allow", "to": ["127.0.0.0/8"], "ports": [udp_target.port]}
    p = start_proxy(name="udp-policy", rules=[allow_echo_only])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
        s.set_proxy(socks.SOCKS5, p.host, p.port)
        s.settimeout(IO_TIMEOUT)
        with s:
            s.bind(("127.0.0.1", 0))
            s.sendto(b"must not arrive", ("127.0.0.1", sink.getsockname()[1]))
            s.sendto(b"allowed", ("127.0.0.1", udp_target.port))
            data, src = s.recvfrom(65536)
            assert (data, src) == (b"ECHO allowed", ("127.0.0.1", udp_target.port))
            with pytest.raises(BlockingIOError):
                sink.recvfrom(65536)
    session = p.wait_session(command="udp")
    assert session["outcome"].endswith("datagrams up 1 down 1 dropped 1"), session
