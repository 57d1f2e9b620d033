"""socksngd under attack and under operators' habits, measured from outside the process.

- A bad-login flood: memory stays bounded and a valid login is answered meanwhile; memory
  after many failed logins returns near where it started.
- A resolver that never answers (a DNS stub run in a network namespace of the test's own):
  CONNECTs to literal addresses stay quick and the thread count stays bounded.
- The SSRF guard inside a namespace: an AnyIP local route and an address added after start
  are refused at once, and multicast through UDP ASSOCIATE never reaches the host's members.

(Memory per idle UDP association is measured by socksng-bench, case udp-idle.)

Every wait has a deadline; namespaces and files in /etc/netns are removed afterwards.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interop_support import (
    IO_TIMEOUT,
    PASSWORD,
    PROC_TIMEOUT,
    STOP_TIMEOUT,
    USER,
    clean_env,
    proxy_config,
    read_ready_line,
    quiet,
    recv_exact,
    sh,
)


def status(pid):
    """VmRSS (KiB) and thread count of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


def greet_login(sock, user, password):
    """RFC 1929 login; returns the status byte (0 = success)."""
    sock.sendall(b"\x05\x01\x02")
    assert sock.recv(2) == b"\x05\x02"
    u, p = user.encode(), password.encode()
    sock.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
    reply = sock.recv(2)
    assert len(reply) == 2, f"no login reply: {reply!r}"
    return reply[1]


def connect_request(sock, host, port):
    """Sends a CONNECT for an IPv4 literal or a name; returns the reply code."""
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
    head = recv_exact(sock, 4)
    tail = {1: 6, 4: 18}.get(head[3])
    if tail is None:
        tail = recv_exact(sock, 1)[0] + 2
    recv_exact(sock, tail)
    return head[1]


def from_source(source, proxy, timeout=IO_TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect((proxy.host, proxy.port))
    return s


# --------------------------------------------------------------------------------------------
# Logins


@pytest.fixture
def password_proxy(start_proxy, users_file):
    def start(**limits):
        cfg = proxy_config(methods=("password",), users_file=users_file, socks4=False)
        cfg["limits"] = limits
        return start_proxy(cfg)

    return start


FLOOD_RSS_BOUND_KIB = 64 * 1024


def test_bad_login_flood_bounded_and_valid_login_answered(password_proxy):
    # Two checks at once (~19 MiB each), whatever the machine's core count.
    proxy = password_proxy(password_checks=2)
    pid = proxy.proc.pid
    rss_start, _ = status(pid)
    stop = threading.Event()
    sent = [0]
    peak = [0]

    def flood(source):
        # Hundreds of connections a second, each one wrong login, then waiting (the
        # connections are held, as an attacker would, until the server drops them).
        held = []
        deadline = time.monotonic() + 4.0
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                s = from_source(source, proxy, timeout=0.5)
                s.sendall(b"\x05\x01\x02\x01\x05alice\x05wrong")
                held.append(s)
                sent[0] += 1
            except OSError:
                pass
            if len(held) > 200:
                held.pop(0).close()
            time.sleep(0.002)
        for s in held:
            s.close()

    floods = [threading.Thread(target=flood, args=(f"127.0.0.{i}",)) for i in (1, 3, 4)]
    for t in floods:
        t.start()
    try:
        # A valid login from another address during the flood, answered within the
        # handshake timeout (10 s) with success.
        answered = []
        for _ in range(3):
            s = from_source("127.0.0.2", proxy, timeout=10)
            t0 = time.monotonic()
            answered.append((greet_login(s, USER, PASSWORD), time.monotonic() - t0))
            s.close()
            peak[0] = max(peak[0], status(pid)[0])
        for t in floods:
            while t.is_alive():
                peak[0] = max(peak[0], status(pid)[0])
                t.join(0.1)
    finally:
        stop.set()
        for t in floods:
            t.join(PROC_TIMEOUT)
    print(f"flood: {sent[0]} bad logins sent; RSS start {rss_start} KiB, peak {peak[0]} KiB")
    assert sent[0] >= 300, "the flood was too small to mean anything"
    assert all(code == 0 for code, _ in answered), answered
    assert peak[0] < FLOOD_RSS_BOUND_KIB, f"RSS peaked at {peak[0]} KiB"
    assert proxy.proc.poll() is None


def test_rss_returns_after_a_thousand_failed_logins(password_proxy):
    # Throttling off: every one of these logins runs a full argon2 check.
    proxy = password_proxy(login_failures_burst=0)
    pid = proxy.proc.pid
    # One successful login first, so the pools and threads a login needs exist.
    s = from_source("127.0.0.1", proxy)
    assert greet_login(s, USER, PASSWORD) == 0
    s.close()
    rss_start, _ = status(pid)

    def worker(count):
        for _ in range(count):
            s = from_source("127.0.0.1", proxy)
            assert greet_login(s, USER, "wrong") == 1
            s.close()

    workers = [threading.Thread(target=worker, args=(500,)) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(300)
        assert not t.is_alive()
    rss_end, _ = status(pid)
    print(f"RSS before {rss_start} KiB, after 1000 failed logins {rss_end} KiB")
    # argon2 needs ~19 MiB per check; none of it may stay behind.
    assert rss_end - rss_start < 8 * 1024, (rss_start, rss_end)


def test_guesser_is_throttled_typo_is_not(password_proxy):
    proxy = password_proxy(login_failures_burst=5, login_failures_per_minute=1)
    # A user who mistypes twice gets in.
    for password in ("typo1", "typo2", PASSWORD):
        s = from_source("127.0.0.5", proxy)
        code = greet_login(s, USER, password)
        s.close()
    assert code == 0
    # A guesser gets a few tries, then fails without a check, even with the right password.
    codes = []
    for i in range(12):
        s = from_source("127.0.0.6", proxy)
        codes.append(greet_login(s, USER, f"guess{i}"))
        s.close()
    s = from_source("127.0.0.6", proxy)
    assert greet_login(s, "bob", "anything") == 1
    s.close()
    assert all(c == 1 for c in codes)
    proxy.log.wait_for(lambda line: 'user="bob"' in line, what="bob's session line")
    throttled = [
        line for line in proxy.log.lines() if "too many failed logins from this address" in line
    ]
    assert len(throttled) >= 7, proxy.log.text()
    # Even the right password fails from the throttled address (else a guesser could go on
    # at full speed against a user whose password is cached), while another address logs in.
    s = from_source("127.0.0.6", proxy)
    assert greet_login(s, USER, PASSWORD) == 1
    s.close()
    s = from_source("127.0.0.7", proxy)
    assert greet_login(s, USER, PASSWORD) == 0
    s.close()


# --------------------------------------------------------------------------------------------
# Namespaces: a resolver that never answers, AnyIP, addresses added after start, multicast


SILENT_DNS = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.53", 53))
print("READY 53", flush=True)
n = 0
while True:
    s.recvfrom(4096)
    n += 1
    if n % 50 == 0:
        print("QUERIES", n, flush=True)
"""

# Runs inside the namespace: many CONNECTs by name that never resolve, then CONNECTs to a
# literal address, each timed; prints one JSON line.
NAME_FLOOD = r"""
import json, socket, struct, sys, threading, time
proxy_port, target_port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
held = []
def ask(i):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
    name = f"never{i}.example.test".encode()
    s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", 80))
    # Closed with a reset at the end: the server ends each session at once.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    held.append(s)
threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
for t in threads: t.start()
for t in threads: t.join(30)
print("FLOODED", len(held), flush=True)
times = []
for _ in range(20):
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
    s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", target_port))
    reply = b""
    while len(reply) < 12:
        chunk = s.recv(12 - len(reply))
        if not chunk: break
        reply += chunk
    s.sendall(b"x")
    echo = s.recv(1)
    times.append(time.monotonic() - t0)
    s.close()
    assert reply[1] == 0 and echo == b"x", reply
print(json.dumps({"times": times}), flush=True)
sys.stdin.read()  # holds the name requests open until the test is done
"""

ECHO = r"""
import socket, threading
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(128)
print("READY", l.getsockname()[1], flush=True)
def serve(c):
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class Ns:
    pass


@pytest.fixture
def ns(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace and /etc/netns/<ns>")
    env = Ns()
    env.name = f"sng-hard-{os.getpid()}"
    env.procs = []
    netns_etc = Path("/etc/netns")
    made_netns_etc = not netns_etc.exists()
    etc = netns_etc / env.name
    quiet("ip", "netns", "del", env.name)
    try:
        sh("ip", "netns", "add", env.name)
        sh("ip", "-n", env.name, "link", "set", "lo", "up")
        sh("ip", "-n", env.name, "addr", "add", "127.0.0.53/8", "dev", "lo")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.53\n")

        def spawn(code, *args, stdin=subprocess.DEVNULL):
            p = subprocess.Popen(
                ["ip", "netns", "exec", env.name, sys.executable, "-c", code, *map(str, args)],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env(),
                start_new_session=True,
            )
            env.procs.append(p)
            return p

        env.spawn = spawn
        yield env
    finally:
        for p in env.procs:
            if p.poll() is None:
                p.kill()
            p.wait(STOP_TIMEOUT)
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()
        quiet("ip", "netns", "del", env.name)
        shutil.rmtree(etc, ignore_errors=True)
        if made_netns_etc and netns_etc.exists() and not any(netns_etc.iterdir()):
            netns_etc.rmdir()


def ns_run(ns, code, *args, timeout=PROC_TIMEOUT):
    r = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        timeout=timeout,
        env=clean_env(),
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


def test_resolver_that_never_answers(start_proxy, ns):
    dns = ns.spawn(SILENT_DNS)
    read_ready_line(dns)
    echo = ns.spawn(ECHO)
    echo_port = read_ready_line(echo)
    lookups = 8
    proxy = start_proxy(
        proxy_config(extra={"limits": {"lookups": lookups}}, timeouts={"connect": "30s"}),
        netns=ns.name,
    )
    pid = proxy.proc.pid
    _, threads_start = status(pid)
    flood = ns.spawn(NAME_FLOOD, proxy.port, echo_port, 400, stdin=subprocess.PIPE)
    lines = []
    deadline = time.monotonic() + PROC_TIMEOUT
    peak_threads = threads_start
    while time.monotonic() < deadline:
        line = flood.stdout.readline().decode()
        assert line, f"flood client ended: {flood.stderr.read().decode(errors='replace')}"
        lines.append(line)
        peak_threads = max(peak_threads, status(pid)[1])
        if line.startswith("{"):
            break
    times = json.loads(lines[-1])["times"]
    peak_threads = max(peak_threads, status(pid)[1])
    print(f"literal CONNECTs during the name flood: max {max(times):.3f}s; threads "
          f"{threads_start} at start, {peak_threads} at peak")
    assert lines[0].startswith("FLOODED 400"), lines
    # Every lookup is still waiting for the resolver (5 s per try) when all twenty literal
    # CONNECTs are done: they waited for none of them.
    assert not [line for line in proxy.log.lines() if 'target="never' in line], (
        "a name session ended before the literal CONNECTs were done"
    )
    # Workers, the log writer, and at most `lookups` resolver threads (plus tokio's spare).
    assert peak_threads <= threads_start + lookups + 2, (threads_start, peak_threads)
    # The flood's connections are reset; every waiting session ends with its client.
    flood.stdin.close()
    flood.wait(PROC_TIMEOUT)
    ended = [0]

    def all_ended(line):
        if 'target="never' in line:
            ended[0] += 1
        return ended[0] == 400

    proxy.log.wait_for(all_ended, what="the 400 name sessions ending with their clients")


TCP_PROBE = r"""
import socket, struct, sys
proxy_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port))
reply = b""
while len(reply) < 12:
    chunk = s.recv(12 - len(reply))
    if not chunk:
        break
    reply += chunk
assert reply[:2] == b"\x05\x00", reply
print(reply[3])
"""

LISTEN_ON = r"""
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(8)
print("READY", l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept(); c.close()
"""


def test_anyip_and_addresses_added_after_start_are_the_hosts(start_proxy, ns):
    # A broad allow rule: it must not open the host's own addresses, however they came.
    proxy = start_proxy(
        proxy_config(rules=({"action": "allow", "to": ["0.0.0.0/0", "::/0"]},)),
        netns=ns.name,
    )
    # An address that is not (yet) this host's: the proxy tries and the network answers.
    before = int(ns_run(ns, TCP_PROBE, proxy.port, "10.77.0.1", 80))
    assert before not in (0, 2), before
    sh("ip", "-n", ns.name, "addr", "add", "10.77.0.1/32", "dev", "lo")
    listener = ns.spawn(LISTEN_ON, "10.77.0.1", 0)
    port = read_ready_line(listener)
    assert int(ns_run(ns, TCP_PROBE, proxy.port, "10.77.0.1", port)) == 2
    # AnyIP: a whole range delivered locally by one route, no address on any interface.
    sh("ip", "-n", ns.name, "route", "add", "local", "198.18.7.0/24", "dev", "lo")
    anyip = ns.spawn(LISTEN_ON, "198.18.7.9", 0)
    port = read_ready_line(anyip)
    assert int(ns_run(ns, TCP_PROBE, proxy.port, "198.18.7.9", port)) == 2
    # Removing the address makes it foreign again.
    sh("ip", "-n", ns.name, "addr", "del", "10.77.0.1/32", "dev", "lo")
    assert int(ns_run(ns, TCP_PROBE, proxy.port, "10.77.0.1", 80)) not in (0, 2)


MULTICAST = r"""
import socket, struct, sys
group, port, proxy_port = "239.255.255.250", int(sys.argv[1]), int(sys.argv[2])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind(("", port))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
              socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
rx.settimeout(5)
# Control: a datagram sent to the group here reaches the member.
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
tx.sendto(b"direct", (group, port))
assert rx.recv(100) == b"direct"
# Through the proxy's UDP ASSOCIATE: dropped.
ctl = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
ctl.sendall(b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
reply = b""
while len(reply) < 12:
    reply += ctl.recv(12 - len(reply))
assert reply[:2] == b"\x05\x00" and reply[3] == 0, reply
relay = (socket.inet_ntoa(reply[6:10]), struct.unpack(">H", reply[10:12])[0])
cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cl.bind(("127.0.0.1", 0))
cl.settimeout(5)
cl.sendto(b"\x00\x00\x00\x01" + socket.inet_aton(group) + struct.pack(">H", port) + b"proxied", relay)
cl.sendto(b"\x00\x00\x00\x01" + socket.inet_aton("255.255.255.255") + struct.pack(">H", port) + b"proxied", relay)
# A unicast datagram after them, echoed by the member's socket address, proves the relay
# has handled (and dropped) the two before it.
cl.sendto(b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port) + b"unicast", relay)
got = rx.recv(100)
print(got.decode())
"""


def test_multicast_through_udp_associate_never_reaches_members(start_proxy, ns):
    sh("ip", "-n", ns.name, "link", "set", "lo", "multicast", "on")
    sh("ip", "-n", ns.name, "route", "add", "224.0.0.0/4", "dev", "lo")
    # The member's unicast address is opened narrowly (for the control datagram); the broad
    # rule opens no multicast group and no broadcast address.
    proxy = start_proxy(
        proxy_config(rules=(
            {"action": "allow", "to": ["127.0.0.1/32"]},
            {"action": "allow", "to": ["0.0.0.0/0"]},
        )),
        netns=ns.name,
    )
    port = 41900 + os.getpid() % 1000
    out = ns_run(ns, MULTICAST, port, proxy.port)
    assert out.strip() == "unicast", out
