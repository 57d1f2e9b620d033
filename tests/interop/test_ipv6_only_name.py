"""A name whose only address is IPv6, asked for by a client that speaks to the proxy over
IPv4 — done for real, in two network namespaces this test creates:

    proxy ns  (lo: 127.0.0.1, ::1; veth fd00:5ca::1/64; no IPv4 route; hosts: v6only.test)
       |  veth, IPv6 only
    target ns (lo; veth fd00:5ca::2/64; HTTP server on [fd00:5ca::2]:PORT)

socksngd runs in the proxy namespace listening on 127.0.0.1 only, and the clients run there
too (`ip netns exec`, which also bind-mounts /etc/netns/<ns>/hosts over /etc/hosts). The
target is not an address of the proxy's host, so the default policy allows it without rules.
Needs root; everything is removed at teardown, also after a failure.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interop_support import (
    CURL_PROXY_ERROR,
    PROC_TIMEOUT,
    clean_env,
    curl,
    read_ready_line,
    run,
    sha256,
    quiet,
    sh,
    terminate,
)

PROXY_IP6 = "fd00:5ca::1"
TARGET_IP6 = "fd00:5ca::2"
NAME = "v6only.test"
SELF_NAME = "self.test"  # the proxy namespace's own veth address

TARGET_SERVER = r"""
import socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

body = open(sys.argv[1], "rb").read()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/blob":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Client", self.client_address[0])
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):  # no FQDN lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

def udp_echo(sock):
    while True:
        data, src = sock.recvfrom(65536)
        sock.sendto(b"ECHO " + data + b" from " + src[0].encode(), src)

srv = Server((sys.argv[2], 0), Handler)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind((sys.argv[2], 0))
threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()
print("READY", srv.server_address[1], udp.getsockname()[1], flush=True)
srv.serve_forever()
"""

PYSOCKS_CLIENT = r"""
import hashlib, socket, sys
import socks

s = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", int(sys.argv[1]), rdns=True)
s.settimeout(10)
s.connect((sys.argv[2], int(sys.argv[3])))
s.sendall(b"GET /blob HTTP/1.0\r\nHost: " + sys.argv[2].encode() + b"\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode(), len(body), hashlib.sha256(body).hexdigest())
"""


PYSOCKS_UDP_CLIENT = r"""
import socket, sys
import socks

s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", int(sys.argv[1]), rdns=True)
s.settimeout(10)
s.bind(("127.0.0.1", 0))
for i in range(3):
    s.sendto(b"dgram%d" % i, (sys.argv[2], int(sys.argv[3])))
    data, src = s.recvfrom(65536)
    print(data.decode(), src[0], src[1])
s.close()
"""


class V6OnlyEnv:
    pass


@pytest.fixture(scope="module")
def v6only(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and /etc/netns/<ns>/hosts")
    pid = os.getpid()
    env = V6OnlyEnv()
    env.proxy_ns, env.target_ns = f"sng-px-{pid}", f"sng-tg-{pid}"
    veth_px, veth_tg = f"sngpx{pid}", f"sngtg{pid}"  # at most 12 characters (limit 15)
    netns_etc = Path("/etc/netns")
    made_netns_etc = not netns_etc.exists()
    etc = netns_etc / env.proxy_ns
    work = tmp_path_factory.mktemp("v6only")
    env.body = os.urandom(512 * 1024)
    env.sha256 = sha256(env.body)
    body_file = work / "body"
    body_file.write_bytes(env.body)
    target = None
    # Leftovers of an earlier run that was killed and had the same pid.
    quiet("ip", "netns", "del", env.proxy_ns)
    quiet("ip", "netns", "del", env.target_ns)
    quiet("ip", "link", "del", veth_px)
    try:
        sh("ip", "netns", "add", env.proxy_ns)
        sh("ip", "netns", "add", env.target_ns)
        sh("ip", "link", "add", veth_px, "type", "veth", "peer", "name", veth_tg)
        sh("ip", "link", "set", veth_px, "netns", env.proxy_ns)
        sh("ip", "link", "set", veth_tg, "netns", env.target_ns)
        for ns, dev, addr in (
            (env.proxy_ns, veth_px, PROXY_IP6),
            (env.target_ns, veth_tg, TARGET_IP6),
        ):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n{TARGET_IP6} {NAME}\n{PROXY_IP6} {SELF_NAME}\n"
        )
        # The namespace's own resolver: a DNS server address inside it where nothing listens,
        # so a name missing from hosts fails at once and no query leaves the namespace.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")

        target = subprocess.Popen(
            ["ip", "netns", "exec", env.target_ns, sys.executable, "-c", TARGET_SERVER,
             str(body_file), TARGET_IP6],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            start_new_session=True,
        )
        env.target_port, env.udp_port = read_ready_line(target)
        yield env
    finally:
        if target is not None:
            terminate(target)
            target.stdout.close()
            target.stderr.close()
        quiet("ip", "netns", "del", env.proxy_ns)
        quiet("ip", "netns", "del", env.target_ns)
        quiet("ip", "link", "del", veth_px)  # only still here if the move failed
        shutil.rmtree(etc, ignore_errors=True)  # named after our pid: ours alone
        if made_netns_etc and netns_etc.exists() and not any(netns_etc.iterdir()):
            netns_etc.rmdir()


@pytest.fixture
def ns_proxy(start_proxy, v6only):
    """socksngd in the proxy namespace, IPv4 listener only, default policy (no rules)."""
    return start_proxy(name="nsproxy", netns=v6only.proxy_ns, listen=["127.0.0.1:0"], rules=[])


def test_setup_is_what_it_claims(v6only):
    """Guards the test's premise: in the proxy namespace the name has only the IPv6
    address, and IPv4 has nowhere to go but loopback."""
    r = run(["getent", "ahosts", NAME], netns=v6only.proxy_ns)
    assert r.returncode == 0, r.stderr
    addrs = {line.split()[0] for line in r.stdout.decode().splitlines()}
    assert addrs == {TARGET_IP6}
    assert run(["getent", "ahostsv4", NAME], netns=v6only.proxy_ns).returncode != 0
    routes4 = sh("ip", "-n", v6only.proxy_ns, "-4", "route", "show")
    assert routes4.strip() == ""


@pytest.mark.parametrize("option", ["--socks5-hostname", "--socks4a"])
def test_curl_ipv4_client_ipv6_only_name(v6only, ns_proxy, tmp_path, option):
    out, hdr = tmp_path / "body", tmp_path / "headers"
    url = f"http://{NAME}:{v6only.target_port}/blob"
    r = curl(option, ns_proxy.hostport, url, output=out, headers=hdr, netns=v6only.proxy_ns)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    body = out.read_bytes()
    assert len(body) == len(v6only.body)
    assert sha256(body) == v6only.sha256
    # The target saw the proxy's IPv6 address on the veth.
    assert f"x-client: {PROXY_IP6}" in hdr.read_text().lower()
    s = ns_proxy.wait_session(target=f"{NAME}:{v6only.target_port}")
    assert s["client"].startswith("127.0.0.1:")
    assert s["connected"] == f"[{TARGET_IP6}]:{v6only.target_port}"
    assert s["command"] == ("connect" if option == "--socks5-hostname" else "socks4-connect")
    assert s["outcome"] == "closed"


def test_pysocks_ipv4_client_ipv6_only_name(v6only, ns_proxy):
    r = run(
        [sys.executable, "-c", PYSOCKS_CLIENT, ns_proxy.port, NAME, v6only.target_port],
        netns=v6only.proxy_ns,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    status, length, digest = r.stdout.decode().rsplit(" ", 2)
    assert status.startswith("HTTP/1.0 200")
    assert (int(length), digest.strip()) == (len(v6only.body), v6only.sha256)
    s = ns_proxy.wait_session(target=f"{NAME}:{v6only.target_port}")
    assert s["connected"] == f"[{TARGET_IP6}]:{v6only.target_port}"


def test_ipv6_only_name_refused_port(v6only, ns_proxy, tmp_path):
    """Nothing listens on port 1 in the target namespace: connection refused, reply 0x05."""
    r = curl("--socks5-hostname", ns_proxy.hostport, f"http://{NAME}:1/",
             output=tmp_path / "b", netns=v6only.proxy_ns)
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert b"(5)" in r.stderr  # curl prints the SOCKS5 reply code
    s = ns_proxy.wait_session(target=f"{NAME}:1")
    assert s["outcome"].startswith("connection refused"), s


def test_unresolvable_name_is_host_unreachable(v6only, ns_proxy, tmp_path):
    """A name neither in hosts nor answered by the namespace's resolver: reply 0x04."""
    r = curl("--socks5-hostname", ns_proxy.hostport, "http://nowhere.test:80/",
             output=tmp_path / "b", netns=v6only.proxy_ns)
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert b"(4)" in r.stderr
    s = ns_proxy.wait_session(target="nowhere.test:80")
    assert s["outcome"].startswith("host unreachable"), s


@pytest.mark.parametrize("url", ["http://192.0.2.1:80/", "http://[2001:db8::1]:80/"])
def test_unroutable_literal_is_network_unreachable(v6only, ns_proxy, tmp_path, url):
    """The proxy namespace has no IPv4 route and no IPv6 route outside fd00:5ca::/64: the
    connect fails at once with ENETUNREACH (no packet leaves), reply 0x03."""
    r = curl("--socks5", ns_proxy.hostport, url, output=tmp_path / "b", netns=v6only.proxy_ns)
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert b"(3)" in r.stderr
    target = url.split("//", 1)[1].rstrip("/")
    s = ns_proxy.wait_session(target=target)
    assert s["outcome"].startswith("network unreachable"), s


def test_pysocks_udp_ipv4_client_ipv6_only_name(v6only, ns_proxy):
    """UDP ASSOCIATE over an IPv4 control connection; datagrams addressed by the name go out
    over IPv6 and the answers come back with the target's IPv6 address (ATYP 0x04)."""
    r = run(
        [sys.executable, "-c", PYSOCKS_UDP_CLIENT, ns_proxy.port, NAME, v6only.udp_port],
        netns=v6only.proxy_ns,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.decode().splitlines() == [
        f"ECHO dgram{i} from {PROXY_IP6} {TARGET_IP6} {v6only.udp_port}" for i in range(3)
    ]
    s = ns_proxy.wait_session(command="udp")
    assert s["client"].startswith("127.0.0.1:")
    assert s["outcome"] == "control connection closed; datagrams up 3 down 3 dropped 0", s


@pytest.mark.parametrize(
    "option,host",
    [
        ("--socks5", "169.254.169.254"),  # cloud metadata (link-local)
        ("--socks5", "[fe80::1]"),  # IPv6 link-local
        ("--socks5", f"[{PROXY_IP6}]"),  # the proxy host's own interface address
        ("--socks5-hostname", SELF_NAME),  # a name resolving to it
    ],
)
def test_host_local_destinations_refused(v6only, ns_proxy, tmp_path, option, host):
    """Destinations on the proxy host beyond loopback are refused by default (reply 0x02).
    Done inside the namespace, where nothing could leave even if the policy failed (it
    would then show as 0x03/0x05/0x01 instead)."""
    r = curl(option, ns_proxy.hostport, f"http://{host}:80/", output=tmp_path / "b",
             netns=v6only.proxy_ns)
    assert r.returncode == CURL_PROXY_ERROR, r.stderr
    assert b"(2)" in r.stderr, r.stderr
    s = ns_proxy.wait_session(target=f"{host}:80")
    assert s["outcome"].endswith("destination is on the proxy host"), s
    assert s["connected"] == "-"
