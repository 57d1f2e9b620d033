"""Service classes seen from outside: the class's SO_MARK and DSCP on socksngd's outgoing
connection as the kernel reports them (`ss`), the class in the admin view, the audit record
and the per-class Prometheus counters (bytes by direction, sessions by outcome, refusals by a
class limit included). The bandwidth shares and limits themselves are tested in
crates/socksng-server/tests/classes.rs."""

import json
import re
import subprocess

import pytest
import socks

from interop_support import (
    IO_TIMEOUT,
    PASSWORD,
    SOCKSNGD,
    USER,
    proxy_config,
    read_jsonl,
    run,
)

parser = pytest.importorskip("prometheus_client.parser")

MARK = 0x2A
DSCP = 46  # EF


def through(proxy, target_port, user=USER, password=PASSWORD):
    s = socks.socksocket()
    s.set_proxy(socks.SOCKS5, proxy.host, proxy.port, username=user, password=password)
    s.settimeout(IO_TIMEOUT)
    s.connect(("127.0.0.1", target_port))
    return s


def echo(s, data):
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(len(data) - len(got))
        assert chunk, "echo ended early"
        got += chunk
    return got


def outgoing_socket_line(target_port):
    """`ss`'s line for the connection to the target (the proxy's outgoing leg)."""
    r = subprocess.run(
        ["ss", "-tnie", "--tos", "dst", f"127.0.0.1:{target_port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("ESTAB")]
    assert len(lines) == 1, r.stdout
    return lines[0]


def test_class_marks_dscp_admin_audit_and_metrics(start_proxy, users_file, echo_target, tmp_path):
    sock_path = tmp_path / "admin.sock"
    audit_path = tmp_path / "audit.jsonl"
    cfg = proxy_config(
        methods=["password"],
        users_file=users_file,
        extra={
            "metrics": {"listen": "127.0.0.1:0"},
            "admin": {"socket": str(sock_path)},
            "audit": {"file": str(audit_path)},
            "classes": [
                {"name": "voice", "users": [USER], "weight": 4, "mark": MARK, "dscp": DSCP,
                 "max_sessions": 1},
            ],
        },
    )
    p = start_proxy(cfg, name="classes")
    line = p.log.wait_for(lambda l: "serving Prometheus metrics" in l and l, what="metrics line")
    addr = re.search(r"metrics=(\S+)", line).group(1)
    url = f"http://{addr}/metrics"

    held = through(p, echo_target.port)
    assert echo(held, b"x" * 1000) == b"x" * 1000
    leg = outgoing_socket_line(echo_target.port)
    assert f"fwmark:{MARK:#x}" in leg, leg
    assert f"tos:{DSCP << 2:#x}" in leg, leg

    r = run([str(SOCKSNGD), "--config", str(p.config_path), "sessions", "--json"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [row["class"] for row in rows if row["command"] == "connect"] == ["voice"], rows

    # The class allows one session at a time: a second is refused (X'02').
    with pytest.raises(socks.ProxyError):
        through(p, echo_target.port)
    held.close()
    p.wait_session(user=USER, command="connect", outcome_kind="completed")

    text = run(["curl", "-q", "--silent", "--max-time", "10", url]).stdout.decode()
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value

    def value(name, **labels):
        return found.get((name, frozenset(labels.items())), 0.0)

    assert value("socksng_class_relayed_bytes_total", **{"class": "voice", "direction": "up"}) == 1000
    assert value("socksng_class_relayed_bytes_total", **{"class": "voice", "direction": "down"}) == 1000
    assert value("socksng_class_sessions_total", **{"class": "voice", "outcome": "completed"}) == 1
    assert value("socksng_class_sessions_total", **{"class": "voice", "outcome": "refused"}) == 1

    p.stop()
    records = [r for r in read_jsonl(audit_path) if r["event"] == "session"]
    assert sorted(r["outcome"] for r in records) == ["completed", "refused"], records
    assert all(r["class"] == "voice" for r in records), records
