"""socksngd's SOCKS over TLS (docs/draft-socksng.md section 6.4) with real peers: curl, the
socksng CLI, `openssl s_client`, and a VPN-like gateway built from network namespaces.

Certificates are made per module with the `openssl` CLI: two CAs (the second one for the
certificate swap on SIGHUP) and server certificates with subjectAltName entries for the names
and addresses the clients use.

The tests on loopback need nothing beyond curl, openssl and the socksng binaries. Those with
network namespaces need root (they skip without it) and remove what they created, also after
a failure:

    require_tls_for_passwords:

        client ns (10.98.0.2, hosts: gw.test)  --veth--  gateway ns (10.98.0.1; socksngd,
                                                          and a service on its 127.0.0.1)

    VPN-style gateway:

        public ns (172.16.2.2, "public" service)
           |  veth 172.16.2.0/24
        laptop ns (hosts: edge.test; its own echo service on 127.0.0.1)
           |  veth 172.16.1.0/24 (the edge's outside)
        edge ns (socksngd: TLS only, passwords, default deny, serves 10.55.0.0/24)
           |  veth 10.55.0.0/24 (the private side)
        private ns (10.55.0.2, "private" service)

    No namespace forwards packets, and the laptop has no route to 10.55.0.0/24: the private
    service is reachable from the laptop only through socksngd on the edge. The private ns
    routes the edge's outside address to the edge (delivered there, not forwarded), since a
    LISTEN for "any address" is announced with the address of its control connection.
"""

import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop_support import (
    CURL_PROXY_ERROR,
    IO_TIMEOUT,
    PASSWORD,
    PROC_TIMEOUT,
    SOCKSNGD,
    Cert,
    Pki,
    USER,
    clean_env,
    curl,
    parse_session,
    proxy_config,
    run,
    sh,
    sha256,
    terminate,
    topology,
)

SOCKSNG = Path(os.environ.get("SOCKSNG") or SOCKSNGD.with_name("socksng"))

# socksng's exit statuses (socksng --help).
EXIT_PROXY = 5  # the proxy failed (TLS verification included)
EXIT_REFUSED = 7  # the proxy refused the request (rule, reply 0x02)

# curl's exit code for "could not connect" (here: no route to the host).
CURL_COULDNT_CONNECT = 7

RELOADED = "TLS certificate and key reloaded"


# --------------------------------------------------------------------------------------------
# Certificates


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.ca1 = p.ca("ca1")
    p.ca2 = p.ca("ca2")  # the certificate swapped in on SIGHUP comes from another CA
    p.local1 = p.leaf(p.ca1, "local1", dns=["localhost"], ips=["127.0.0.1"])
    p.local2 = p.leaf(p.ca2, "local2", dns=["localhost"], ips=["127.0.0.1"])
    p.gw = p.leaf(p.ca1, "gw", dns=["gw.test"], ips=[GW_IP])
    p.edge = p.leaf(p.ca1, "edge", dns=["edge.test"], ips=[EDGE_OUT])
    return p


def tls_section(cert, **more):
    return {"cert": str(cert.pem), "key": str(cert.key), **more}


# --------------------------------------------------------------------------------------------
# Client programs


def socksng(*args, input=None, netns=None, env=None):
    """Runs the socksng CLI to completion (stdin empty unless `input`)."""
    if not SOCKSNG.is_file():
        raise AssertionError(f"socksng binary not found at {SOCKSNG} (set SOCKSNG to its path)")
    return run([SOCKSNG, *args], input=input, netns=netns, env=env)


def text(b):
    return b.decode(errors="replace")


class Piped:
    """A client program with pipes on stdin and stdout, read with deadlines; its stderr goes
    to a file. Killed at close if still running (it is ours: we started it)."""

    def __init__(self, argv, stderr_path, netns=None, env=None):
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.stderr_path = Path(stderr_path)
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=clean_env(**(env or {})),
            start_new_session=True,
        )
        self._buf = b""

    def stderr(self):
        return self.stderr_path.read_bytes().decode(errors="replace")

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self):
        self.proc.stdin.close()

    def _fill(self, deadline, what):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {what} within the deadline; have {self._buf[:200]!r}; "
                                 f"stderr: {self.stderr()}")
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def recv_exact(self, n, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            if not self._fill(deadline, f"{n} bytes"):
                raise AssertionError(f"EOF after {len(self._buf)} of {n} bytes; "
                                     f"stderr: {self.stderr()}")
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def read_line(self, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if not self._fill(deadline, "line"):
                raise AssertionError(f"EOF before a line: {self._buf!r}; stderr: {self.stderr()}")
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def read_to_eof(self, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        while self._fill(deadline, "EOF"):
            pass
        data, self._buf = self._buf, b""
        return data

    def wait(self, timeout=PROC_TIMEOUT):
        return self.proc.wait(timeout)

    def close(self):
        terminate(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
        self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def listen_line(proxy, addr):
    host, port = addr
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for line in proxy.log.lines():
        if "accepting SOCKS connections" in line and line.rstrip().endswith(f"listen={shown}"):
            return line
    raise AssertionError(f"no listen line for {shown}")


def tls_proxy(start_proxy, pki, cert=None, **tls):
    """socksngd on loopback, no authentication, loopback destinations allowed, TLS with
    `cert` (default: localhost from CA1)."""
    cfg = proxy_config(extra={"tls": tls_section(cert or pki.local1, **tls)})
    return start_proxy(cfg, name="tls")


# --------------------------------------------------------------------------------------------
# 1. TLS and plain SOCKS on one port; a TLS-only listener


def test_tls_and_plain_socks_on_one_port(start_proxy, pki, http_target, echo_target, tmp_path):
    proxy = tls_proxy(start_proxy, pki, listen=["127.0.0.1:0"])
    shared, tls_only = proxy.addrs
    assert 'tls="also"' in listen_line(proxy, shared)
    assert 'tls="only"' in listen_line(proxy, tls_only)
    echo = f"127.0.0.1:{echo_target.port}"

    # Plain SOCKS5 (curl) on the shared port.
    out = tmp_path / "body"
    url = f"http://localhost:{http_target.port}/blob?tag=tls-shared-plain"
    r = curl("--socks5-hostname", f"127.0.0.1:{shared[1]}", url, output=out)
    assert r.returncode == 0, text(r.stderr)
    assert sha256(out.read_bytes()) == http_target.sha256
    assert len(http_target.tagged("tls-shared-plain")) == 1
    s = proxy.wait_session(target=f"localhost:{http_target.port}")
    assert s["outcome"] == "closed", s

    # SOCKS over TLS (socksng, socks5s://) on the same port.
    payload = os.urandom(300 * 1024)
    for port in (shared[1], tls_only[1]):
        mark = proxy.log.mark()
        r = socksng("-x", f"socks5s://localhost:{port}", "--proxy-cacert", pki.ca1.pem,
                    "connect", echo, input=payload)
        assert r.returncode == 0, text(r.stderr)
        assert r.stdout == payload
        s = proxy.wait_session(start=mark, target=echo)
        assert (s["bytes_up"], s["bytes_down"]) == (str(len(payload)),) * 2, s
        assert s["outcome"] == "closed", s

    # The shared port really spoke TLS to socksng: a client trusting another CA gives up.
    r = socksng("-x", f"socks5s://localhost:{shared[1]}", "--proxy-cacert", pki.ca2.pem,
                "connect", echo, input=b"x")
    assert r.returncode == EXIT_PROXY, text(r.stderr)
    assert "unknown CA" in text(r.stderr)

    # The TLS-only listener does not take plain SOCKS.
    mark = proxy.log.mark()
    url = f"http://localhost:{http_target.port}/blob?tag=tls-only-plain"
    r = curl("--socks5-hostname", f"127.0.0.1:{tls_only[1]}", url, output=tmp_path / "b2")
    assert r.returncode == CURL_PROXY_ERROR, text(r.stderr)
    assert http_target.tagged("tls-only-plain") == []
    s = proxy.wait_session(start=mark)
    assert s["outcome"].startswith("TLS handshake failed"), s
    assert s["target"] == "-", s


# --------------------------------------------------------------------------------------------
# 2. openssl s_client as the TLS client


def s_client_argv(port, ca, *more):
    return ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca,
            "-servername", "localhost", "-verify_return_error", *more]


def test_openssl_s_client_alpn_and_raw_socks5(start_proxy, pki, echo_target, tmp_path):
    proxy = tls_proxy(start_proxy, pki)

    r = run(s_client_argv(proxy.port, pki.ca1.pem, "-alpn", "socks"), input=b"")
    out = text(r.stdout)
    assert r.returncode == 0, out + text(r.stderr)
    assert "ALPN protocol: socks" in out, out
    assert "Verification: OK" in out, out
    assert "Verify return code: 0 (ok)" in out, out

    # ALPN is optional for the client: a handshake without it works too (section 6.4).
    r = run(s_client_argv(proxy.port, pki.ca1.pem), input=b"")
    out = text(r.stdout)
    assert r.returncode == 0, out + text(r.stderr)
    assert "No ALPN negotiated" in out and "Verification: OK" in out, out

    # A raw SOCKS5 CONNECT typed into the TLS connection. -nocommands: the random bytes hold
    # 'Q' and 'R' (s_client's command letters); -no_ign_eof: the end of its standard input
    # ends the connection (a TLS close_notify) instead of being ignored, as -quiet would.
    argv = s_client_argv(proxy.port, pki.ca1.pem, "-alpn", "socks", "-quiet", "-no_ign_eof",
                         "-nocommands")
    mark = proxy.log.mark()
    with Piped(argv, tmp_path / "s_client.stderr") as c:
        c.send(b"\x05\x01\x00")
        assert c.recv_exact(2) == b"\x05\x00"
        c.send(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
               + struct.pack(">H", echo_target.port))
        reply = c.recv_exact(10)
        assert reply[:4] == b"\x05\x00\x00\x01", reply
        assert reply[4:8] == socket.inet_aton("127.0.0.1"), reply
        sent = 0
        for _ in range(16):
            chunk = os.urandom(4096)
            c.send(chunk)
            sent += len(chunk)
            assert c.recv_exact(len(chunk)) == chunk
        c.close_stdin()
        assert c.read_to_eof() == b""
        assert c.wait() == 0, c.stderr()
    s = proxy.wait_session(start=mark, target=f"127.0.0.1:{echo_target.port}")
    assert s["command"] == "connect", s
    assert (s["bytes_up"], s["bytes_down"]) == (str(sent), str(sent)), s
    assert s["outcome"] == "closed", s


# --------------------------------------------------------------------------------------------
# 3. The certificate swapped on SIGHUP while a session keeps running


def test_certificate_swap_on_sighup(start_proxy, pki, echo_target, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    cert = Cert(live / "server.pem", live / "server.key")
    shutil.copyfile(pki.local1.pem, cert.pem)
    shutil.copyfile(pki.local1.key, cert.key)
    proxy = tls_proxy(start_proxy, pki, cert=cert, on_plain_listeners=False,
                      listen=["127.0.0.1:0"])
    url = f"socks5s://localhost:{proxy.addrs[1][1]}"
    echo = f"127.0.0.1:{echo_target.port}"

    def client(ca, data):
        return socksng("-x", url, "--proxy-cacert", ca, "connect", echo, input=data)

    r = client(pki.ca1.pem, b"first")
    assert (r.returncode, r.stdout) == (0, b"first"), text(r.stderr)
    r = client(pki.ca2.pem, b"x")
    assert r.returncode == EXIT_PROXY and "unknown CA" in text(r.stderr), text(r.stderr)

    argv = [SOCKSNG, "-x", url, "--proxy-cacert", pki.ca1.pem, "connect", echo]
    with Piped(argv, tmp_path / "old.stderr") as old:
        old.send(b"before the swap\n")
        assert old.recv_exact(16) == b"before the swap\n"

        # Replaced as a deploy tool would: new files renamed over the old ones.
        for src, dst in ((pki.local2.pem, cert.pem), (pki.local2.key, cert.key)):
            tmp = dst.with_suffix(".new")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        mark = proxy.log.mark()
        proxy.proc.send_signal(signal.SIGHUP)
        proxy.log.wait_for(lambda line: RELOADED in line or "TLS reload failed" in line,
                           start=mark, what="the TLS reload line")
        assert any(RELOADED in line for line in proxy.log.lines()[mark:]), proxy.log.text()

        mark = proxy.log.mark()
        r = client(pki.ca2.pem, b"trusts CA2")
        assert (r.returncode, r.stdout) == (0, b"trusts CA2"), text(r.stderr)
        r = client(pki.ca1.pem, b"trusts CA1 only")
        assert r.returncode == EXIT_PROXY, text(r.stderr)
        assert "unknown CA" in text(r.stderr), text(r.stderr)
        assert r.stdout == b""
        s = proxy.wait_session(start=mark, target="-")
        assert s["outcome"].startswith("TLS handshake failed"), s

        # The session from before the swap goes on, both ways.
        old.send(b"after the swap\n")
        assert old.recv_exact(15) == b"after the swap\n"
        mark = proxy.log.mark()
        old.close_stdin()
        assert old.read_to_eof() == b""
        assert old.wait() == 0, old.stderr()
    s = proxy.wait_session(start=mark, target=echo)
    assert (s["bytes_up"], s["bytes_down"]) == ("31", "31"), s
    assert s["outcome"] == "closed", s


# --------------------------------------------------------------------------------------------
# Network namespaces


GW_IP, GW_CLIENT_IP = "10.98.0.1", "10.98.0.2"
EDGE_OUT, LAPTOP_OUT = "172.16.1.1", "172.16.1.2"
EDGE_PRIV, PRIVATE_IP, PRIVATE_NET = "10.55.0.1", "10.55.0.2", "10.55.0.0/24"
LAPTOP_PUB, PUBLIC_IP = "172.16.2.1", "172.16.2.2"

# Sends a file's bytes, half-closes, prints what came back (prefixed "RESET:" when reset).
TCP_CLIENT = r"""
import socket, sys, threading
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
payload = open(path, "rb").read()
s = socket.create_connection((host, port), timeout=15)
def send():
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
t = threading.Thread(target=send, daemon=True)
t.start()
data = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except ConnectionResetError:
    sys.stdout.buffer.write(b"RESET:")
sys.stdout.buffer.write(data)
"""

HTTP_GET = b"GET / HTTP/1.0\r\nHost: service\r\n\r\n"


def http_body(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), raw
    return body.decode()


def run_in(ns, code, *args):
    r = run([sys.executable, "-c", code, *args], netns=ns)
    assert r.returncode == 0, text(r.stderr)
    return r.stdout


def first_session(proxy, start):
    return proxy.log.wait_for(parse_session, start=start, what="a session line")


# --------------------------------------------------------------------------------------------
# 4. require_tls_for_passwords


@pytest.fixture(scope="module")
def gw():
    def build(t):
        t.client = t.ns("c")
        t.server = t.ns("g")
        t.link("g", t.client, GW_CLIENT_IP, t.server, GW_IP)
        t.etc(t.client, {"gw.test": GW_IP})
        t.http_port, _ = t.service(t.server, "gateway-loopback", "127.0.0.1")

    yield from topology("tls", build)


def test_require_tls_for_passwords(start_proxy, gw, pki, users_file, tmp_path):
    cfg = proxy_config(
        listen=[f"{GW_IP}:0", "127.0.0.1:0"],
        methods=["password"],
        users_file=users_file,
        clients=["127.0.0.0/8", "10.98.0.0/24"],
        extra={"tls": tls_section(pki.gw)},
    )
    cfg["auth"]["require_tls_for_passwords"] = True
    proxy = start_proxy(cfg, name="gw", netns=gw.server)
    (_, outside_port), (_, loopback_port) = proxy.addrs
    service = f"127.0.0.1:{gw.http_port}"

    # Cleartext from the other namespace: the password method is not offered (0xFF).
    mark = proxy.log.mark()
    r = curl("--socks5-hostname", f"{GW_IP}:{outside_port}", "-U", f"{USER}:{PASSWORD}",
             f"http://{service}/", output=tmp_path / "refused", netns=gw.client)
    assert r.returncode == CURL_PROXY_ERROR, text(r.stderr)
    s = first_session(proxy, mark)
    assert s["client"].startswith(f"{GW_CLIENT_IP}:"), s
    assert s["outcome_kind"] == "handshake-failed", s
    assert "password logins need TLS" in s["outcome"], s
    assert s["user"] == "-", s

    # The same user over TLS from the same namespace, the same port.
    mark = proxy.log.mark()
    r = socksng("-x", f"socks5s://gw.test:{outside_port}", "--proxy-cacert", pki.ca1.pem,
                "-U", USER, "connect", service, input=HTTP_GET, netns=gw.client,
                env={"SOCKSNG_PASSWORD": PASSWORD})
    assert r.returncode == 0, text(r.stderr)
    assert http_body(r.stdout) == "gateway-loopback client 127.0.0.1\n"
    s = proxy.wait_session(start=mark, target=service)
    assert s["client"].startswith(f"{GW_CLIENT_IP}:"), s
    assert s["user"] == USER and s["outcome"] == "closed", s

    # Cleartext from the server's own host is fine.
    mark = proxy.log.mark()
    out = tmp_path / "local"
    r = curl("--socks5-hostname", f"127.0.0.1:{loopback_port}", "-U", f"{USER}:{PASSWORD}",
             f"http://{service}/", output=out, netns=gw.server)
    assert r.returncode == 0, text(r.stderr)
    assert out.read_text() == "gateway-loopback client 127.0.0.1\n"
    s = proxy.wait_session(start=mark, target=service)
    assert s["client"].startswith("127.0.0.1:"), s
    assert s["user"] == USER and s["outcome"] == "closed", s


# --------------------------------------------------------------------------------------------
# 5. A VPN-style gateway


@pytest.fixture(scope="module")
def vpn():
    def build(t):
        t.laptop = t.ns("lap")
        t.edge = t.ns("edge")
        t.private = t.ns("priv")
        t.public = t.ns("pub")
        t.link("o", t.laptop, LAPTOP_OUT, t.edge, EDGE_OUT)
        t.link("p", t.edge, EDGE_PRIV, t.private, PRIVATE_IP)
        t.link("u", t.laptop, LAPTOP_PUB, t.public, PUBLIC_IP)
        # Hosts on the private side reach the edge's outside address through the edge (the
        # edge's own address: nothing is forwarded).
        sh("ip", "-n", t.private, "route", "add", f"{EDGE_OUT}/32", "via", EDGE_PRIV)
        t.etc(t.laptop, {"edge.test": EDGE_OUT})
        t.etc(t.private, {})
        t.private_http, _ = t.service(t.private, "private", PRIVATE_IP)
        t.public_http, _ = t.service(t.public, "public", PUBLIC_IP)
        _, t.laptop_echo = t.service(t.laptop, "laptop", "127.0.0.1")

    yield from topology("v", build)


def edge_config(pki, users_file):
    cfg = proxy_config(
        listen=[],
        methods=["password"],
        users_file=users_file,
        clients=["172.16.1.0/24"],
        rules=[{"action": "allow", "users": ["*"], "to": [PRIVATE_NET]}],
        extra={
            "tls": tls_section(pki.edge, listen=[f"{EDGE_OUT}:0"]),
            "ng": {"served": [{"to": [PRIVATE_NET]}]},
        },
    )
    cfg["access"]["default"] = "deny"
    cfg["auth"]["require_tls_for_passwords"] = True
    return cfg


@pytest.fixture
def edge(start_proxy, vpn, pki, users_file):
    proxy = start_proxy(edge_config(pki, users_file), name="edge", netns=vpn.edge)
    proxy.url = f"socks5s://edge.test:{proxy.port}"
    return proxy


def via_edge(vpn, edge, pki, *args, input=None):
    """socksng in the laptop namespace with the edge as its proxy, logged in as USER."""
    return socksng("-x", edge.url, "--proxy-cacert", pki.ca1.pem, "-U", USER, *args,
                   input=input, netns=vpn.laptop, env={"SOCKSNG_PASSWORD": PASSWORD})


def test_vpn_private_service_unreachable_directly(vpn, tmp_path):
    r = run(["ip", "route", "get", PRIVATE_IP], netns=vpn.laptop)
    assert r.returncode != 0 and b"unreachable" in r.stderr, r
    r = curl(f"http://{PRIVATE_IP}:{vpn.private_http}/", output=tmp_path / "b",
             netns=vpn.laptop)
    assert r.returncode == CURL_COULDNT_CONNECT, text(r.stderr)
    # The public service, on the other hand, is the laptop's neighbour.
    r = curl(f"http://{PUBLIC_IP}:{vpn.public_http}/", output=tmp_path / "p", netns=vpn.laptop)
    assert r.returncode == 0, text(r.stderr)
    assert (tmp_path / "p").read_text() == f"public client {LAPTOP_PUB}\n"


def test_vpn_edge_announces_only_its_range(vpn, edge, pki):
    r = run([SOCKSNGD, "served", "--config", edge.config_path])
    assert r.returncode == 0, text(r.stderr)
    served = json.loads(r.stdout)
    assert [m.get("subnets") for m in served["proxy-match"]] == [[PRIVATE_NET]], served
    r = via_edge(vpn, edge, pki, "info", edge.url, "--json")
    assert r.returncode == 0, text(r.stderr)
    info = json.loads(r.stdout)
    assert info["protocol"] == "socks-ng", info
    assert info["ranges"] == [{"prefixes": [PRIVATE_NET], "domains": [], "ports": []}], info
    s = edge.wait_session(command="capabilities")
    assert s["user"] == USER and s["outcome"] == "1 range(s) announced", s


def test_vpn_private_service_through_edge(vpn, edge, pki):
    target = f"{PRIVATE_IP}:{vpn.private_http}"
    r = via_edge(vpn, edge, pki, "connect", target, input=HTTP_GET)
    assert r.returncode == 0, text(r.stderr)
    assert http_body(r.stdout) == f"private client {EDGE_PRIV}\n"
    s = edge.wait_session(target=target)
    assert s["client"].startswith(f"{LAPTOP_OUT}:"), s
    assert s["user"] == USER and s["outcome"] == "closed", s
    assert s["connected"] == target, s


def test_vpn_edge_refuses_outside_its_range(vpn, edge, pki):
    target = f"{PUBLIC_IP}:{vpn.public_http}"
    r = via_edge(vpn, edge, pki, "connect", target, input=HTTP_GET)
    assert r.returncode == EXIT_REFUSED, text(r.stderr)
    assert "not allowed" in text(r.stderr), text(r.stderr)
    assert r.stdout == b""
    s = edge.wait_session(target=target)
    assert s["reply"] == "2" and s["connected"] == "-", s
    assert "not allowed" in s["outcome"], s


@pytest.mark.parametrize("how", ["configured-route", "announced-range"])
def test_vpn_client_config_routes(vpn, edge, pki, tmp_path, how):
    lines = [
        "[[server]]",
        'name = "edge"',
        f'url = "socks5s://{USER}:{PASSWORD}@edge.test:{edge.port}"',
        f'tls_ca = "{pki.ca1.pem}"',
    ]
    if how == "configured-route":
        lines += ["ask = false", "", "[[route]]", f'to = ["{PRIVATE_NET}"]', 'via = "edge"']
    else:
        lines += ["ask = true"]  # the edge's CAPABILITIES name the private range
    lines += ["", "[options]", 'cache_dir = ""']
    client_cfg = tmp_path / "client.toml"
    client_cfg.write_text("\n".join(lines) + "\n")

    private = f"{PRIVATE_IP}:{vpn.private_http}"
    r = socksng("-c", client_cfg, "-v", "connect", private, input=HTTP_GET, netns=vpn.laptop)
    assert r.returncode == 0, text(r.stderr)
    assert http_body(r.stdout) == f"private client {EDGE_PRIV}\n"
    assert f"socksng: {private} via edge" in text(r.stderr), text(r.stderr)
    s = edge.wait_session(target=private)
    assert s["user"] == USER and s["outcome"] == "closed", s
    # -v must not call the edge unused: it carries the private range, announced or not.
    assert "used by no route" not in text(r.stderr), text(r.stderr)

    public = f"{PUBLIC_IP}:{vpn.public_http}"
    r = socksng("-c", client_cfg, "-v", "connect", public, input=HTTP_GET, netns=vpn.laptop)
    assert r.returncode == 0, text(r.stderr)
    assert http_body(r.stdout) == f"public client {LAPTOP_PUB}\n"
    assert f"socksng: {public} via direct" in text(r.stderr), text(r.stderr)
    assert not [s for s in edge.sessions() if s.get("target") == public], edge.log.text()


def test_vpn_listen_publishes_laptop_service(vpn, edge, pki, tmp_path):
    argv = [SOCKSNG, "-x", edge.url, "--proxy-cacert", pki.ca1.pem, "-U", USER,
            "forward-remote", f"127.0.0.1:{vpn.laptop_echo}"]
    with Piped(argv, tmp_path / "fr.stderr", netns=vpn.laptop,
               env={"SOCKSNG_PASSWORD": PASSWORD}) as fr:
        line = fr.read_line(timeout=PROC_TIMEOUT)
        assert line.startswith("listening on ") and line.endswith(
            f" -> 127.0.0.1:{vpn.laptop_echo}"), line
        announced = line.split()[2]
        host, _, port = announced.rpartition(":")
        assert host == EDGE_OUT, line  # the edge's address on the control connection

        payload = os.urandom(200 * 1024)
        data = tmp_path / "payload"
        data.write_bytes(payload)
        # From the private side, to the announced address and to the edge's private one.
        for addr in (host, EDGE_PRIV):
            out = run_in(vpn.private, TCP_CLIENT, addr, port, str(data))
            assert out[:7] == b"laptop\n" and out[7:] == payload, (addr, out[:80])

        # The laptop's side of the edge is outside the allowed range: no one there gets in.
        out = run_in(vpn.laptop, TCP_CLIENT, host, port, str(data))
        assert out in (b"", b"RESET:"), out[:80]
        edge.log.wait_for(
            lambda line: "LISTEN: incoming connection refused by policy" in line
            and f"from={LAPTOP_OUT}:" in line,
            what="the refusal of the laptop-side peer",
        )
        assert fr.proc.poll() is None, fr.stderr()

    accepts = [s for s in edge.sessions() if s["command"] == "accept"]
    assert len(accepts) == 2, edge.log.text()
    for s in accepts:
        # The claims came over TLS from the laptop, as its user; the peers were private.
        assert s["client"].startswith(f"{LAPTOP_OUT}:") and s["user"] == USER, s
        assert s["connected"].startswith(f"{PRIVATE_IP}:"), s
        assert (s["bytes_up"], s["bytes_down"]) == (str(7 + len(payload)), str(len(payload))), s
        assert s["outcome"] == "closed", s
    s = edge.wait_session(command="listen")
    assert s["user"] == USER and s["connected"] == announced, s
    assert s["outcome"].startswith("control connection closed; announced 2, claimed 2,"), s
