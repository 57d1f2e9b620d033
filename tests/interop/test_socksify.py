"""socksify (`socksng exec -- PROGRAM`, the LD_PRELOAD shim) with unmodified programs, in
network namespaces the test makes:

    client C 10.88.1.1 ---- 10.88.1.2 proxy P 10.88.2.1 ---- 10.88.2.2 target T

P forwards, and C has a route to T through it, so a connection that went direct would work
and the target would see C's address: what went through the proxy is seen from P's
10.88.2.1. The name intranet.sfy is in P's hosts file only; C's resolver is a counting DNS
server the test runs on C's loopback, so a query that leaves the client is seen.

- curl by name, with no proxy option: fetched through socksngd, zero DNS queries in C (and
  without the shim the same curl queries C's resolver and fails);
- Python clients of every waiting style: asyncio (epoll), select, poll and blocking sockets,
  by name and by address, getpeername, and a refusal as ECONNREFUSED;
- ssh to an sshd in T by name;
- Dante (a plain SOCKS5 server) as the proxy;
- a proxy that is down: the program fails at once with its error and nothing reaches the
  target directly;
- `python3 -m http.server` under the shim listens on the proxy's outside, and 20 concurrent
  fetches from the target's side all get the file; through Dante (plain SOCKS5) it listens
  with BIND, for one connection;
- the C API (socksng.h): a C program connects by name, listens on the proxy's outside and
  accepts a connection from the target's side, and reads the proxy's capabilities;
- UDP: a Python client's sendto/recvfrom, connect/send/recv and sendmsg/recvmsg by name,
  and dig against a dnsmasq in T (libuv's sendmmsg/recvmmsg through syscall()), through
  socksngd's UDP-TUNNEL and through Dante's UDP ASSOCIATE.
"""

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop_support import (
    LogReader,
    SOCKSNGD,
    STARTUP_TIMEOUT,
    free_port,
    need,
    proxy_config,
    run,
    sh,
    terminate,
    topology,
    wait_session_count,
)

SOCKSNG = Path(os.environ.get("SOCKSNG") or SOCKSNGD.with_name("socksng"))

C_IP, P_C_IP, P_T_IP, T_IP = "10.88.1.1", "10.88.1.2", "10.88.2.1", "10.88.2.2"
NAME = "intranet.sfy"

# HTTP in T: each answer says the client's address and how many requests came before.
TARGET = r"""
import socket, socketserver, sys, threading
name, addr = sys.argv[1], sys.argv[2]
count = [0]
lock = threading.Lock()

class Whoami(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(15)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return
            data += chunk
        with lock:
            count[0] += 1
            n = count[0]
        body = ("%s client %s request %d\n" % (name, self.client_address[0], n)).encode()
        s.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % len(body) + body)
        s.shutdown(socket.SHUT_WR)

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    def handle_error(self, request, client_address):
        pass

http = Server((addr, 0), Whoami)
closed = socket.socket()
closed.bind((addr, 0))  # bound, never listening: a refused port
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, 0))
def echo():
    while True:
        data, peer = udp.recvfrom(65535)
        udp.sendto(b"from %s: " % peer[0].encode() + data, peer)
threading.Thread(target=echo, daemon=True).start()
print("READY", http.server_address[1], closed.getsockname()[1], udp.getsockname()[1], flush=True)
http.serve_forever()
"""

# A DNS server on C's loopback that counts queries (written to a file) and answers SERVFAIL.
COUNTING_DNS = r"""
import socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
n = 0
open(path, "w").write("0")
print("READY 53", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    n += 1
    open(path, "w").write(str(n))
    if len(q) >= 12:
        s.sendto(q[:2] + bytes([0x81, 0x82]) + q[4:6] + b"\0\0\0\0\0\0" + q[12:], peer)
"""

# Every waiting style against the target, by name and by address; prints one line each.
CLIENTS = r"""
import asyncio, select, selectors, socket, sys
name, port, ip, closed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
REQ = b"GET / HTTP/1.0\r\n\r\n"

def body(raw):
    return raw.split(b"\r\n\r\n", 1)[1].decode().strip()

def read_all(s):
    data = b""
    while True:
        c = s.recv(4096)
        if not c:
            return data
        data += c

async def aio(host):
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 15)
    w.write(REQ)
    data = await asyncio.wait_for(r.read(), 15)
    peer = w.get_extra_info("peername")[0]
    w.close()
    return body(data), peer

def nonblocking(host, wait):
    addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    s = socket.socket()
    s.setblocking(False)
    rc = s.connect_ex(addr)
    assert rc == 115, f"connect_ex gave {rc}, not EINPROGRESS"
    if wait == "select":
        _, w, _ = select.select([], [s], [], 15)
        assert w, "select timed out"
    else:
        p = select.poll()
        p.register(s, select.POLLOUT)
        assert p.poll(15000), "poll timed out"
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    peer = s.getpeername()[0]
    s.setblocking(True)
    s.settimeout(15)
    s.sendall(REQ)
    return body(read_all(s)), peer

def blocking(host):
    s = socket.create_connection((host, port), timeout=15)
    s.sendall(REQ)
    peer = s.getpeername()[0]
    return body(read_all(s)), peer

def ipv6_placeholder(host):
    # An IPv6 socket to the name's IPv6 placeholder (the proxy is reached IPv4-mapped).
    addr = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
    s = socket.socket(socket.AF_INET6)
    s.settimeout(15)
    s.connect(addr)
    s.sendall(REQ)
    peer = s.getpeername()[0]
    d = s.dup()  # a duplicate tells the same peer
    assert d.getpeername()[0] == peer, (d.getpeername(), peer)
    d.close()
    return body(read_all(s)), peer

for label, f in [
    ("ipv6-name", lambda: ipv6_placeholder(name)),
    ("asyncio-name", lambda: asyncio.run(aio(name))),
    ("asyncio-ip", lambda: asyncio.run(aio(ip))),
    ("select-name", lambda: nonblocking(name, "select")),
    ("poll-ip", lambda: nonblocking(ip, "poll")),
    ("blocking-name", lambda: blocking(name)),
]:
    got, peer = f()
    print(label, peer, "|", got, flush=True)

# A port nobody listens on: the proxy's refusal is the program's ECONNREFUSED.
try:
    socket.create_connection((name, closed), timeout=15)
    print("refused-blocking connected?!")
except ConnectionRefusedError:
    print("refused-blocking ECONNREFUSED")
async def refused():
    try:
        await asyncio.wait_for(asyncio.open_connection(name, closed), 15)
        return "connected?!"
    except ConnectionRefusedError:
        return "ECONNREFUSED"
print("refused-asyncio", asyncio.run(refused()))
"""


@pytest.fixture(scope="module")
def net():
    def build(t):
        t.client = t.ns("c")
        t.proxy = t.ns("p")
        t.target = t.ns("t")
        t.link("c", t.client, C_IP, t.proxy, P_C_IP)
        t.link("t", t.proxy, P_T_IP, t.target, T_IP)
        sh("ip", "netns", "exec", t.proxy, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        sh("ip", "-n", t.client, "route", "add", "10.88.2.0/24", "via", P_C_IP)
        sh("ip", "-n", t.target, "route", "add", "10.88.1.0/24", "via", P_T_IP)
        t.etc(t.proxy, {NAME: T_IP})
        t.etc(t.client, {})
        t.etc(t.target, {})
        t.http_port, t.closed_port, t.udp_port = t.service(t.target, "target", T_IP,
                                                           script=TARGET)
        t.dns_count = Path(f"/tmp/socksify-dns-{os.getpid()}")
        t.service(t.client, str(t.dns_count), "-", script=COUNTING_DNS)

    yield from topology("sfy", build)


def dns_queries(net):
    return int(net.dns_count.read_text() or "0")


def socksified(net, proxy_url, *program, timeout=60):
    return run([SOCKSNG, "-x", proxy_url, "exec", "--", *program], netns=net.client,
               timeout=timeout)


def fetch_direct(net):
    r = run(["curl", "-q", "-sS", "--noproxy", "*", "--max-time", "15",
             f"http://{T_IP}:{net.http_port}/"], netns=net.client)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


@pytest.fixture
def edge(start_proxy, net):
    cfg = proxy_config(listen=[f"{P_C_IP}:0"], clients=["10.88.1.0/24"], rules=[
        {"action": "allow", "to": ["10.88.2.0/24"]},
    ], extra={"ng": {"ports": [{"ports": ["1024-65535"]}]}})
    p = start_proxy(cfg, name="edge", netns=net.proxy)
    p.url = f"socks5h://{P_C_IP}:{p.port}"
    return p


def test_curl_by_a_name_only_the_proxy_knows_sends_no_dns_query(net, edge):
    url = f"http://{NAME}:{net.http_port}/"
    # Without the shim the name is looked up here, and fails: the counter sees it.
    before = dns_queries(net)
    r = run(["curl", "-q", "-sS", "--noproxy", "*", "--max-time", "15", url], netns=net.client)
    assert r.returncode == 6, r  # could not resolve
    assert dns_queries(net) > before

    before = dns_queries(net)
    r = socksified(net, edge.url, "curl", "-q", "-sS", "--max-time", "20", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(f"target client {P_T_IP} "), r.stdout
    assert dns_queries(net) == before, "a DNS query left the client"
    s = edge.wait_session(target=f"{NAME}:{net.http_port}")
    assert s["outcome_kind"] == "completed", s

    # A shell that forks and execs curl: the child is socksified through the environment.
    r = socksified(net, edge.url, "sh", "-c", f"curl -q -sS --max-time 20 {url} && echo done")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [f"target client {P_T_IP} request "
                                              f"{r.stdout.decode().split()[4]}", "done"], r.stdout
    assert dns_queries(net) == before


def test_every_waiting_style_and_refusals(net, edge):
    before = dns_queries(net)
    r = socksified(net, edge.url, sys.executable, "-c", CLIENTS, NAME, str(net.http_port), T_IP,
                   str(net.closed_port))
    assert r.returncode == 0, r.stderr.decode()
    lines = dict(l.split(" ", 1) for l in r.stdout.decode().splitlines())
    for label in ("ipv6-name", "asyncio-name", "asyncio-ip", "select-name", "poll-ip",
                  "blocking-name"):
        peer, _, got = lines[label].partition(" | ")
        assert got.startswith(f"target client {P_T_IP} "), (label, lines[label])
        # The program sees what it connected to: a placeholder for the name, else the address.
        if label.endswith("-ip"):
            assert peer == T_IP, (label, peer)
        elif label.startswith("ipv6"):
            assert peer.startswith("fd53:6f63:6b73:6e67::"), (label, peer)
        else:
            assert peer.startswith("198.18.") or peer.startswith("198.19."), (label, peer)
    assert lines["refused-blocking"] == "ECONNREFUSED"
    assert lines["refused-asyncio"] == "ECONNREFUSED"
    assert b"refused" in r.stderr, r.stderr  # one clear line per refusal
    assert dns_queries(net) == before


def test_ssh_by_name_through_the_shim(net, edge, children, tmp_path):
    sshd, ssh, keygen = need("sshd", "ssh", "ssh-keygen")
    Path("/run/sshd").mkdir(exist_ok=True)
    d = tmp_path / "ssh"
    d.mkdir()
    for key in ("host_key", "client_key"):
        r = run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", d / key])
        assert r.returncode == 0, r.stderr
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress {T_IP}\nHostKey {d}/host_key\nPidFile none\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nLogLevel DEBUG1\n"
    )
    server = children("sshd", ["ip", "netns", "exec", net.target, sshd, "-f",
                               d / "sshd_config", "-D", "-e"])
    server.log.wait_for(lambda l: f"Server listening on {T_IP} port {port}." in l,
                        timeout=STARTUP_TIMEOUT, what="sshd's listen line")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    r = socksified(net, edge.url, ssh, "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                   "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                   "-o", "LogLevel=ERROR", "-i", d / "client_key", "-p", str(port),
                   f"{user}@{NAME}", "echo", "hello from $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr.decode()
    # sshd saw the proxy's address, not the client's.
    assert r.stdout.decode().startswith(f"hello from {P_T_IP} "), r.stdout


@pytest.fixture
def dante(net, children, tmp_path):
    (danted,) = need("danted")
    port = free_port()
    conf = tmp_path / "danted.conf"
    users = "user.privileged: root\nuser.unprivileged: nobody\n"
    conf.write_text(
        f"logoutput: stderr\ninternal: {P_C_IP} port = {port}\nexternal: {P_T_IP}\n"
        f"clientmethod: none\nsocksmethod: none\n{users}"
        "client pass {\n  from: 10.88.1.0/24 to: 0.0.0.0/0\n}\n"
        "socks pass {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  command: udpassociate udpreply\n}\n"
        "socks pass {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  command: bind bindreply\n}\n"
        "socks pass {\n  from: 10.88.1.0/24 to: 10.88.2.0/24\n}\n"
    )
    d = children("danted", ["ip", "netns", "exec", net.proxy, danted, "-f", conf, "-N", "1",
                            "-p", tmp_path / "danted.pid"])
    d.log.wait_for(lambda l: "running" in l, timeout=STARTUP_TIMEOUT, what="Dante's start line")
    d.url = f"socks5h://{P_C_IP}:{port}"
    return d


def test_dante_as_a_plain_socks5_proxy(net, dante):
    before = dns_queries(net)
    r = socksified(net, dante.url, "curl", "-q", "-sS", "--max-time", "20",
                   f"http://{NAME}:{net.http_port}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(f"target client {P_T_IP} "), r.stdout
    assert dns_queries(net) == before


def test_a_proxy_that_is_down_fails_at_once_and_nothing_goes_direct(net):
    dead = f"socks5h://{P_C_IP}:{free_port()}"  # nothing listens there
    seen = fetch_direct(net)  # the target is reachable directly: a leak would get through
    n = int(seen.split()[-1])
    for url in (f"http://{NAME}:{net.http_port}/", f"http://{T_IP}:{net.http_port}/"):
        start = time.monotonic()
        r = socksified(net, dead, "curl", "-q", "-sS", "--max-time", "20", url)
        took = time.monotonic() - start
        assert r.returncode == 7, r  # could not connect
        assert b"socksng: cannot reach the proxy" in r.stderr, r.stderr
        assert took < 15, f"{took:.1f}s to fail"  # deadline, not a timing measure
    # The next direct request is the very next one the target served.
    assert int(fetch_direct(net).split()[-1]) == n + 1


# 20 GETs at once from the outside; prints the SHA-256 of each body (or the error).
FETCH_MANY = r"""
import hashlib, socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = [None] * n
def get(i):
    try:
        s = socket.create_connection((host, port), timeout=20)
        s.sendall(b"GET /blob.bin HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
        head, _, body = data.partition(b"\r\n\r\n")
        out[i] = hashlib.sha256(body).hexdigest() if head.startswith(b"HTTP/1.0 200") else head[:40]
    except Exception as e:
        out[i] = repr(e)
threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join(30)
for o in out: print(o)
"""


def test_http_server_listens_on_the_proxys_outside(net, edge, children, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    blob = os.urandom(256 * 1024)
    (www / "blob.bin").write_bytes(blob)
    server = children("http.server", [
        "ip", "netns", "exec", net.client, SOCKSNG, "-x", edge.url, "exec", "--",
        sys.executable, "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", www,
    ])
    line = server.log.wait_for(lambda l: "socksng: listening on" in l and l,
                               timeout=STARTUP_TIMEOUT, what="the shim's listening line")
    public = line.split("listening on ")[1].split()[0]
    host, port = public.rsplit(":", 1)
    assert host == P_C_IP, line  # the proxy's address, not the client's
    r = run([sys.executable, "-c", FETCH_MANY, host, port, "20"], netns=net.target)
    assert r.returncode == 0, r.stderr
    want = hashlib.sha256(blob).hexdigest()
    got = r.stdout.decode().split()
    assert got == [want] * 20, got
    wait_session_count(edge, 20)  # the listener's own line comes when it closes
    accepts = [s for s in edge.sessions() if s["command"] == "accept"]
    assert len(accepts) == 20 and all(s["outcome_kind"] == "completed" for s in accepts), accepts


# UDP by name in every calling style; prints one line each.
UDP_CLIENT = r"""
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(15)
s.sendto(b"one", (name, port))
data, src = s.recvfrom(1000)
print("sendto", src[0], data.decode())
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(15)
c.connect((name, port))
c.send(b"two")
print("connected", c.getpeername()[0], c.recv(1000).decode())
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
m.settimeout(15)
m.sendmsg([b"thr", b"ee"], [], 0, (name, port))
data, _, flags, src = m.recvmsg(1000)
print("sendmsg", src[0], data.decode())
"""


def test_udp_by_name_every_calling_style(net, edge):
    before = dns_queries(net)
    r = socksified(net, edge.url, sys.executable, "-c", UDP_CLIENT, NAME, str(net.udp_port))
    assert r.returncode == 0, r.stderr.decode()
    lines = {l.split(" ", 1)[0]: l.split(" ", 2)[1:] for l in r.stdout.decode().splitlines()}
    for label, word in (("sendto", "one"), ("connected", "two"), ("sendmsg", "three")):
        source, text = lines[label]
        # The reply seems to come from the placeholder the program sent to ...
        assert source.startswith("198.18.") or source.startswith("198.19."), (label, source)
        # ... and the target saw the proxy.
        assert text == f"from {P_T_IP}: {word}", (label, text)
    assert dns_queries(net) == before


@pytest.fixture
def dnsmasq(net, children, tmp_path):
    (binary,) = need("dnsmasq")
    d = children("dnsmasq", [
        "ip", "netns", "exec", net.target, binary, "--keep-in-foreground", "--log-facility=-",
        "--port=5353", f"--listen-address={T_IP}", "--bind-interfaces", "--no-resolv",
        "--no-hosts", "--user=root", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        "--address=/test.sfy/10.9.9.9", "--log-queries",
    ])
    d.log.wait_for(lambda l: "started" in l, timeout=STARTUP_TIMEOUT, what="dnsmasq's start")
    return d


@pytest.mark.parametrize("proxy", ["socksngd", "dante"])
def test_dig_through_the_proxy(net, proxy, request, dnsmasq):
    (dig,) = need("dig")
    url = request.getfixturevalue("edge" if proxy == "socksngd" else "dante").url
    before = dns_queries(net)
    r = socksified(net, url, dig, "+short", "+tries=1", "+timeout=10", f"@{T_IP}", "-p", "5353",
                   "www.test.sfy", "A")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["10.9.9.9"], r.stdout
    # The query reached dnsmasq from the proxy, not from the client.
    dnsmasq.log.wait_for(lambda l: f"query[A] www.test.sfy from {P_T_IP}" in l,
                         what="dnsmasq's query line")
    assert dns_queries(net) == before
    if proxy == "socksngd":
        # A SOCKS-NG server carries it inside the stream (UDP-TUNNEL), not UDP ASSOCIATE.
        s = request.getfixturevalue("edge").wait_session(command="udp-tunnel")
        assert s["outcome_kind"] == "completed", s


REPO = Path(__file__).resolve().parents[2]


def test_c_api(net, edge, request, tmp_path):
    (gcc,) = need("gcc")
    binary = tmp_path / "api_client"
    lib_dir = SOCKSNG.parent
    r = run([gcc, "-Wall", "-Werror", "-I", REPO / "crates/socksng-socksify/include",
             REPO / "tests/interop/c/api_client.c", "-L", lib_dir, "-lsocksng_socksify",
             "-o", binary])
    assert r.returncode == 0, r.stderr.decode()
    prog = subprocess.Popen(
        ["ip", "netns", "exec", net.client, "env", f"SOCKSNG_PROXY={edge.url}",
         f"LD_LIBRARY_PATH={lib_dir}", binary, NAME, str(net.http_port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    request.addfinalizer(lambda: terminate(prog))
    out = LogReader(prog.stdout)
    line = out.wait_for(lambda l: l.startswith("connect ") and l, what="the connect line")
    assert line.startswith(f"connect target client {P_T_IP} "), line
    line = out.wait_for(lambda l: l.startswith("listening ") and l, what="the listening line")
    host, port = line.split()[1].rsplit(":", 1)
    assert host == P_C_IP, line
    got = run([sys.executable, "-c",
               "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 15);"
               "print(s.recv(100).decode().strip())", host, port], netns=net.target)
    assert got.stdout.decode().strip() == "hello from C", got
    out.wait_for(lambda l: l == f"accepted {T_IP}" or None, what="the accepted line")
    line = out.wait_for(lambda l: l.startswith("capabilities ") and l, what="capabilities")
    caps = json.loads(line.split(" ", 1)[1])
    assert caps["server"] == edge.url and caps["revision"] >= 1, caps
    # The served ranges cover the target (the rules allow it).
    served = [ipaddress.ip_network(p) for r in caps["ranges"] for p in r["prefixes"]]
    assert any(ipaddress.ip_address(T_IP) in n for n in served), caps
    assert prog.wait(timeout=15) == 0


def test_http_server_through_dante_listens_with_bind_for_one_connection(net, dante, children,
                                                                         tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("through BIND\n")
    server = children("http.server", [
        "ip", "netns", "exec", net.client, SOCKSNG, "-x", dante.url, "exec", "--",
        sys.executable, "-m", "http.server", "8001", "--bind", "0.0.0.0", "--directory", www,
    ])
    line = server.log.wait_for(lambda l: "socksng: listening on" in l and l,
                               timeout=STARTUP_TIMEOUT, what="the shim's listening line")
    assert any("plain SOCKS5 server: listening with BIND" in l for l in server.log.lines())
    host, port = line.split("listening on ")[1].split()[0].rsplit(":", 1)
    assert host == P_T_IP, line  # Dante's external address
    r = run(["curl", "-q", "-sS", "--noproxy", "*", "--max-time", "15",
             f"http://{host}:{port}/index.html"], netns=net.target)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"through BIND\n", r.stdout


def test_a_config_file_server_asked_for_its_ranges(net, edge, tmp_path):
    """A server of the client configuration file that announces its ranges (`ask`, the
    default): `socksng exec` asks it before starting the program, whose shim then routes by
    the cached answer; a shim with nothing cached says so rather than staying silent."""
    cache = tmp_path / "cache"
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'[[server]]\nname = "edge"\nurl = "{edge.url}"\n'
                   f'[options]\ncache_dir = "{cache}"\n')
    url = f"http://{T_IP}:{net.http_port}/"
    # Nothing cached, no launcher: the shim says the ranges are unknown.
    r = run(["curl", "-q", "-sS", "--max-time", "15", url], netns=net.client,
            env={"LD_PRELOAD": str(SOCKSNG.parent / "libsocksng_socksify.so"),
                 "SOCKSNG_CLIENT_CONFIG": str(cfg)})
    assert b"the ranges edge serves are not known yet" in r.stderr, r.stderr
    # The launcher asks; the program goes through the proxy by the announced ranges.
    r = run([SOCKSNG, "-c", cfg, "exec", "--", "curl", "-q", "-sS", "--max-time", "15", url],
            netns=net.client)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(f"target client {P_T_IP} "), r.stdout
    assert b"not known yet" not in r.stderr, r.stderr



def test_exec_discover_routes_by_the_proxy_a_lease_announces(net, edge, tmp_path):
    """`socksng --discover exec`: the proxy a DHCP lease announces enters the shim's route
    table as it enters the launcher's (asked for its ranges), and a configured route still
    wins over it (draft section 10.4)."""
    lease = tmp_path / "dhclient.leases"
    lease.write_text('lease {\n  option unknown-224 "%s";\n}\n' % edge.url)
    env = {"SOCKSNG_LEASE_FILES": str(lease), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    url = f"http://{T_IP}:{net.http_port}/"
    program = ["exec", "--", "curl", "-q", "-sS", "--max-time", "15", url]
    # Nothing configured and no --discover: nothing to route by.
    r = run([SOCKSNG, *program], netns=net.client, env=env)
    assert r.returncode != 0 and b"no proxy configured" in r.stderr, r.stderr
    # With --discover the learned proxy carries what it serves.
    r = run([SOCKSNG, "--discover", *program], netns=net.client, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(f"target client {P_T_IP} "), r.stdout
    edge.wait_session(command="connect", target=f"{T_IP}:{net.http_port}",
                      outcome_kind="completed")
    # A configured route (here: direct, which this network routes) keeps its destinations
    # from the learned proxy: the target sees the client's own address.
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'[[route]]\nto = ["{T_IP}/32"]\nvia = "direct"\n')
    r = run([SOCKSNG, "--discover", "-c", cfg, *program], netns=net.client, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(f"target client {C_IP} "), r.stdout
