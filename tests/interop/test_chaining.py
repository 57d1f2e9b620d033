"""socksngd's upstream chaining ([[upstreams]], [[routes]], [forwarding]) with real processes
and real peers, beside what crates/socksng-server/tests/chaining.rs shows in-process:

1. an upstream socksngd process that is terminated mid-run: the front passes it over for the
   next one (a WARN line naming it), and with both gone it refuses instead of going direct;
2. Dante (danted) as a plain SOCKS5 upstream for curl's CONNECT and for PySocks' UDP
   ASSOCIATE, the latter by a route that selects by command only;
3. `ssh -D` (OpenSSH against a private sshd) as a plain SOCKS5 upstream;
4. a loop visible in the file refused by `socksngd check` and at start, and a loop between two
   socksngd processes cut by the hop limit after a bounded number of sessions.

Every hop binds its outgoing connections to an address of its own (`external`, 127.0.0.x), so
the targets tell by the source address which hop reached them. Readiness is taken from log
lines (socksngd, danted, sshd) or a READY line (ssh's LocalCommand), never from sleeping.
Dante and OpenSSH are optional: their tests skip when the programs are missing, except under
CI (scripts/test-all installs them), where a missing program is a failure.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import socks

from interop_support import (
    CURL_PROXY_ERROR,
    IO_TIMEOUT,
    PROC_TIMEOUT,
    SOCKSNGD,
    STARTUP_TIMEOUT,
    HttpTarget,
    curl,
    free_port,
    need,
    parse_session,
    proxy_config,
    read_ready_line,
    run,
    sha256,
    to_toml,
)

UPSTREAM_FAILED = "upstream failed: passed over until the retry time"
MAX_HOPS = 8  # forwarding.max_hops by default
CURL_SOURCE = "127.0.0.43"  # curl's own source address in the loop test


def text(b):
    return b.decode(errors="replace")


def hop(external, upstreams=(), routes=(), forwarding=None, listen="127.0.0.1:0"):
    """A socksngd configuration: no authentication, loopback destinations allowed, outgoing
    connections from `external`; `upstreams` as (name, url) pairs."""
    cfg = proxy_config(listen=[listen], extra={"external": [external]})
    if forwarding:
        cfg["forwarding"] = dict(forwarding)
    if upstreams:
        cfg["upstreams"] = [{"name": n, "url": u} for n, u in upstreams]
    if routes:
        cfg["routes"] = [dict(r) for r in routes]
    return cfg


def socks5h(proxy):
    return f"socks5h://{proxy.hostport}"


def upstream_failures(proxy, name, start=0):
    """The front's WARN lines saying upstream `name` was passed over."""
    return [
        line
        for line in proxy.log.lines()[start:]
        if "WARN" in line and UPSTREAM_FAILED in line and f" upstream={name} " in line
    ]


def wait_failure(proxy, name, start=0):
    return proxy.log.wait_for(
        lambda line: "WARN" in line and UPSTREAM_FAILED in line and f" upstream={name} " in line
        and line,
        start=start,
        what=f"the WARN line for upstream {name}",
    )


def fetch(front, target, tag, tmp_path):
    """curl through `front` (SOCKS5, the proxy resolving) to the HTTP target on 127.0.0.1;
    returns curl's result and the front's session line for it."""
    mark = front.log.mark()
    out = tmp_path / f"{tag}.body"
    url = f"http://127.0.0.1:{target.port}/blob?tag={tag}"
    r = curl("--socks5-hostname", front.hostport, url, output=out)
    s = front.wait_session(start=mark, target=f"127.0.0.1:{target.port}")
    if r.returncode == 0:
        assert sha256(out.read_bytes()) == target.sha256, tag
    return r, s


def sources(target, tag):
    return [r["client"][0] for r in target.tagged(tag)]


# --------------------------------------------------------------------------------------------
# 1. An upstream that goes down mid-run


def test_upstream_terminated_mid_run_next_takes_over_never_direct(
    start_proxy, http_target, tmp_path
):
    first = start_proxy(hop("127.0.0.11"), name="first")
    second = start_proxy(hop("127.0.0.12"), name="second")
    front = start_proxy(
        hop(
            "127.0.0.13",
            upstreams=[("first", socks5h(first)), ("second", socks5h(second))],
            routes=[{"via": ["first", "second"]}],
            # Long enough that a passed-over upstream is not tried again during the test.
            forwarding={"retry_after": "1h"},
        ),
        name="front",
    )

    r, s = fetch(front, http_target, "chain-up-1", tmp_path)
    assert r.returncode == 0, text(r.stderr)
    assert s["via"] == "first" and s["connected"] == first.hostport, s
    assert s["outcome"] == "closed", s
    assert sources(http_target, "chain-up-1") == ["127.0.0.11"]
    inner = first.wait_session(target=f"127.0.0.1:{http_target.port}")
    assert inner["outcome"] == "closed", inner

    # The first upstream ends (its own process, SIGTERM); the next request takes the second.
    assert first.stop() == 0, first.log.text()
    mark = front.log.mark()
    r, s = fetch(front, http_target, "chain-up-2", tmp_path)
    assert r.returncode == 0, text(r.stderr)
    assert s["via"] == "second" and s["connected"] == second.hostport, s
    assert sources(http_target, "chain-up-2") == ["127.0.0.12"]
    warn = wait_failure(front, "first", start=mark)
    assert f"url=socks5h://{first.hostport}" in warn, warn
    assert "error=" in warn, warn

    # Passed over: the next sessions go to the second without trying the first again.
    for tag in ("chain-up-3", "chain-up-4"):
        r, s = fetch(front, http_target, tag, tmp_path)
        assert r.returncode == 0, text(r.stderr)
        assert s["via"] == "second", s
        assert sources(http_target, tag) == ["127.0.0.12"]
    assert len(upstream_failures(front, "first")) == 1, front.log.text()

    # Both gone: the request is refused; the route does not list direct, so the front never
    # reaches the target itself.
    assert second.stop() == 0, second.log.text()
    mark = front.log.mark()
    r, s = fetch(front, http_target, "chain-up-5", tmp_path)
    assert r.returncode == CURL_PROXY_ERROR, (r.returncode, text(r.stderr))
    assert s["outcome_kind"] == "refused" and s["reply"] == "1", s
    assert s["connected"] == "-", s
    # The line names the upstreams tried (the one passed over last), not "direct".
    assert s["via"] == "second,first", s
    assert "upstream" in s["outcome"] and "failed" in s["outcome"], s
    wait_failure(front, "second", start=mark)
    assert http_target.tagged("chain-up-5") == []
    assert not [q for q in http_target.requests if q["client"][0] == "127.0.0.13"], (
        "the front reached the target itself"
    )
    assert front.proc.poll() is None


# --------------------------------------------------------------------------------------------
# 2. Dante as a plain SOCKS5 upstream

DANTE_EXTERNAL = "127.0.0.22"


def dante_config(port, external, log):
    """Method none on 127.0.0.1:PORT, connections out from `external`, loopback only. The UDP
    ASSOCIATE rule takes any address: clients name none (0.0.0.0:0, as RFC 1928 allows) and
    Dante matches the request's address; the datagrams are then judged by the loopback rule."""
    users = "user.privileged: root\nuser.unprivileged: nobody\n" if os.geteuid() == 0 else ""
    return (
        f"logoutput: stderr {log}\n"
        f"internal: 127.0.0.1 port = {port}\n"
        f"external: {external}\n"
        "clientmethod: none\n"
        "socksmethod: none\n"
        f"{users}"
        "client pass {\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n}\n"
        "socks pass {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  command: udpassociate\n"
        "  log: connect disconnect error\n}\n"
        "socks pass {\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n  log: connect disconnect error\n}\n"
        "socks block {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  log: connect error\n}\n"
    )


@pytest.fixture
def dante(children, tmp_path):
    (danted,) = need("danted")
    port = free_port()
    log = tmp_path / "danted.log"
    conf = tmp_path / "danted.conf"
    conf.write_text(dante_config(port, DANTE_EXTERNAL, log))
    d = children("danted", [danted, "-f", conf, "-N", "1", "-p", tmp_path / "danted.pid"])
    # Logged once its listening socket is bound; a failed bind ends it with the reason.
    d.log.wait_for(lambda line: "running" in line, timeout=STARTUP_TIMEOUT,
                   what="Dante's start line")
    d.port = port
    d.hostport = f"127.0.0.1:{port}"
    d.logfile = log
    return d


def test_dante_as_plain_socks5_upstream_for_connect_and_udp(
    start_proxy, dante, http_target, udp_target, tmp_path
):
    other = HttpTarget(size=4096)  # not routed: the front reaches it itself
    try:
        front = start_proxy(
            hop(
                "127.0.0.21",
                upstreams=[("dante", f"socks5h://{dante.hostport}")],
                routes=[
                    # A destination route: CONNECT to the HTTP target only.
                    {"to": ["127.0.0.0/8"], "ports": [http_target.port],
                     "commands": ["connect"], "via": ["dante"]},
                    # By command only: UDP ASSOCIATE, which has no destination yet.
                    {"commands": ["udp"], "via": ["dante"]},
                ],
            ),
            name="front",
        )

        # curl's CONNECT goes through Dante, which connects from its own external address.
        r, s = fetch(front, http_target, "chain-dante", tmp_path)
        assert r.returncode == 0, text(r.stderr)
        assert s["via"] == "dante" and s["connected"] == dante.hostport, s
        assert s["outcome"] == "closed", s
        assert sources(http_target, "chain-dante") == [DANTE_EXTERNAL]
        dante.log.wait_for(
            lambda line: "tcp/connect" in line and f"127.0.0.1.{http_target.port}" in line,
            what="Dante's line for the CONNECT",
        )

        # The control: a port no route names goes direct, from the front's own address.
        r, s = fetch(front, other, "chain-dante-direct", tmp_path)
        assert r.returncode == 0, text(r.stderr)
        assert s["via"] == "direct", s
        assert sources(other, "chain-dante-direct") == ["127.0.0.21"]

        # PySocks' UDP ASSOCIATE: the front opens an association on Dante and relays there.
        mark = front.log.mark()
        sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.set_proxy(socks.SOCKS5, front.host, front.port)
        sock.settimeout(IO_TIMEOUT)
        payloads = [b"dante-udp-%d:" % i + os.urandom(size)
                    for i, size in enumerate((1, 500, 1400, 8000))]
        with sock:
            sock.bind(("127.0.0.1", 0))  # sends UDP ASSOCIATE to the front
            for payload in payloads:
                sock.sendto(payload, ("127.0.0.1", udp_target.port))
                data, src = sock.recvfrom(65536)
                assert (data, src) == (b"ECHO " + payload, ("127.0.0.1", udp_target.port))
        seen = {data: src for src, data in list(udp_target.received)}
        for payload in payloads:
            assert seen[payload][0] == DANTE_EXTERNAL, seen[payload]
        s = front.wait_session(start=mark, command="udp")
        assert s["via"] == "dante", s
        assert s["outcome"].endswith(f"datagrams up {len(payloads)} down {len(payloads)} "
                                     "dropped 0"), s
        dante.log.wait_for(lambda line: "udp/udpassociate" in line,
                           what="Dante's line for the UDP association")
    finally:
        other.close()


# --------------------------------------------------------------------------------------------
# 3. ssh -D as a plain SOCKS5 upstream


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
PermitTTY no
X11Forwarding no
LogLevel DEBUG1
"""


@pytest.fixture
def ssh_d(children, tmp_path):
    """A private sshd on 127.0.0.1 (our own host and client keys) and `ssh -N -D` to it."""
    sshd, ssh, keygen = need("sshd", "ssh", "ssh-keygen")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation, normally the service's
    elif not Path("/run/sshd").is_dir():
        pytest.skip("sshd needs /run/sshd (made by root)")
    d = tmp_path / "ssh"
    d.mkdir()
    for key in ("host_key", "client_key"):
        r = run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "socksng-test", "-f", d / key])
        assert r.returncode == 0, text(r.stderr)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    sshd_port = free_port()
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=sshd_port, dir=d))
    server = children("sshd", [sshd, "-f", d / "sshd_config", "-D", "-e"])
    server.log.wait_for(
        lambda line: f"Server listening on 127.0.0.1 port {sshd_port}." in line,
        timeout=STARTUP_TIMEOUT,
        what="sshd's listen line",
    )
    socks_port = free_port()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    client = children(
        "ssh",
        [
            ssh, "-F", "/dev/null", "-N", "-D", f"127.0.0.1:{socks_port}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            # Run once the forwardings are set up: the SOCKS port is listening by then.
            "-o", "PermitLocalCommand=yes", "-o", f"LocalCommand=echo READY {socks_port}",
            "-i", d / "client_key", "-p", sshd_port, f"{user}@127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr_path=d / "ssh.stderr",
    )
    try:
        assert read_ready_line(client.proc) == socks_port
    except AssertionError as e:
        raise AssertionError(f"{e}; ssh: {(d / 'ssh.stderr').read_text()}") from None
    server.hostport = f"127.0.0.1:{socks_port}"
    return server


def test_ssh_dynamic_forwarding_as_plain_socks5_upstream(start_proxy, ssh_d, http_target, tmp_path):
    front = start_proxy(
        hop("127.0.0.31", upstreams=[("ssh", f"socks5h://{ssh_d.hostport}")],
            routes=[{"via": ["ssh"]}]),
        name="front",
    )
    for i in range(2):
        tag = f"chain-ssh-{i}"
        r, s = fetch(front, http_target, tag, tmp_path)
        assert r.returncode == 0, text(r.stderr)
        assert s["via"] == "ssh" and s["connected"] == ssh_d.hostport, s
        assert s["outcome"] == "closed", s
        # sshd made the connection (from the kernel's choice, 127.0.0.1), not the front.
        assert sources(http_target, tag) == ["127.0.0.1"]
        ssh_d.log.wait_for(
            lambda line: "server_request_direct_tcpip" in line
            and f"target 127.0.0.1 port {http_target.port}" in line,
            what="sshd's direct-tcpip line",
        )
    assert not upstream_failures(front, "ssh"), front.log.text()


# --------------------------------------------------------------------------------------------
# 4. Loops


def test_loop_in_the_file_is_refused_by_check_and_at_start(tmp_path):
    port = free_port()

    def check(upstream_port, *cmd):
        cfg = hop("127.0.0.1", listen=f"127.0.0.1:{port}",
                  upstreams=[("me", f"socks5h://localhost:{upstream_port}")],
                  routes=[{"via": ["me"]}])
        path = tmp_path / f"loop-{upstream_port}.toml"
        path.write_text(to_toml(cfg))
        return run([SOCKSNGD, "--config", path, *cmd], timeout=PROC_TIMEOUT)

    r = check(port, "check")
    assert r.returncode != 0, text(r.stdout)
    assert "this server itself" in text(r.stderr), text(r.stderr)
    assert '"me"' in text(r.stderr), text(r.stderr)
    # Running it fails the same way, before listening.
    r = check(port)
    assert r.returncode != 0, text(r.stdout)
    assert "this server itself" in text(r.stderr), text(r.stderr)
    assert "accepting SOCKS connections" not in text(r.stderr)
    # Another port is no loop.
    r = check(port + 1 if port < 65535 else port - 1, "check")
    assert r.returncode == 0, text(r.stderr)
    assert "configuration OK" in text(r.stdout), text(r.stdout)


def test_loop_between_two_servers_is_cut_by_the_hop_limit(start_proxy, http_target, tmp_path):
    # A forwards everything to B and B to A: neither file shows the loop.
    a_port = free_port()
    b = start_proxy(hop("127.0.0.41", upstreams=[("a", f"socks5h://127.0.0.1:{a_port}")],
                        routes=[{"via": ["a"]}]), name="B")
    a = start_proxy(hop("127.0.0.42", listen=f"127.0.0.1:{a_port}",
                        upstreams=[("b", socks5h(b))], routes=[{"via": ["b"]}]), name="A")
    assert a.port == a_port

    began = time.monotonic()
    url = f"http://127.0.0.1:{http_target.port}/blob?tag=chain-loop"
    # From an address of its own, to tell curl's session from those B opens on A.
    r = curl("--interface", CURL_SOURCE, "--socks5-hostname", a.hostport, url,
             output=tmp_path / "loop.body")
    elapsed = time.monotonic() - began
    assert r.returncode == CURL_PROXY_ERROR, (r.returncode, text(r.stderr))
    # A plain SOCKS5 client hears general failure, not the SOCKS-NG code X'0F'.
    assert text(r.stderr).rstrip().endswith("(1)"), text(r.stderr)
    assert elapsed < 10, f"the loop took {elapsed:.1f}s to be cut"
    assert http_target.tagged("chain-loop") == []

    # curl's session ends last; then stop both, so that the logs are complete when counted.
    outer = a.log.wait_for(
        lambda line: (s := parse_session(line)) and s["client"].startswith(CURL_SOURCE + ":")
        and s,
        what="the session of curl's request",
    )
    assert outer["outcome_kind"] == "refused" and outer["connected"] == "-", outer
    assert "upstream b refused" in outer["outcome"], outer
    # curl speaks plain SOCKS5: it heard X'01', and the line says so.
    assert outer["reply"] == "1" and outer["via"] == "b", outer
    assert a.stop() == 0 and b.stop() == 0
    a_sessions, b_sessions = a.sessions(), b.sessions()
    total = len(a_sessions) + len(b_sessions)
    assert MAX_HOPS <= total <= 2 * MAX_HOPS, (
        f"{total} sessions for one request:\n{a.log.text()}\n{b.log.text()}"
    )
    for s in a_sessions + b_sessions:
        assert s["outcome_kind"] == "refused", s
        assert s["target"] == f"127.0.0.1:{http_target.port}", s
    # The last server reached says why: the hop limit. The others pass its refusal back.
    cut = [s for s in a_sessions + b_sessions
           if "passed through" in s["outcome"] and "limit" in s["outcome"]]
    assert len(cut) == 1, a.log.text() + "\n" + b.log.text()
    assert cut[0]["reply"] == "15", cut[0]
    assert f"passed through {MAX_HOPS} servers already (limit {MAX_HOPS})" in cut[0]["outcome"]
    for s in a_sessions + b_sessions:
        if s is not cut[0]:
            assert "refused" in s["outcome"] and "0x0f" in s["outcome"].lower(), s
    # A refusal is an answer: neither server took the other for broken.
    assert not upstream_failures(a, "b") and not upstream_failures(b, "a")
