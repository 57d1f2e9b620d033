"""socksngd's Prometheus endpoint, scraped with curl and read by the Prometheus project's own
text parser (the `prometheus_client` package): after a known mix of sessions (downloads,
a refusal by rule, failed logins) the counters say exactly that, and nothing is left active."""

import re

import pytest

from interop_support import (
    LOOPBACK_ALLOW,
    PASSWORD,
    USER,
    curl,
    parse_session,
    proxy_config,
    run,
)

parser = pytest.importorskip("prometheus_client.parser")


def scrape(url):
    r = run(["curl", "-q", "--silent", "--show-error", "--max-time", "10", url])
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def samples(text):
    """{(name, frozenset(labels)): value} for every sample."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0.0)


def test_counters_match_the_sessions_made(start_proxy, users_file, http_target, tmp_path):
    denied_port = http_target.port + 1 if http_target.port < 65535 else http_target.port - 1
    cfg = proxy_config(
        methods=["password"],
        users_file=users_file,
        rules=[
            {"action": "deny", "to": ["127.0.0.0/8"], "ports": [denied_port]},
            LOOPBACK_ALLOW,
        ],
        extra={"metrics": {"listen": "127.0.0.1:0"}},
    )
    p = start_proxy(cfg, name="metrics")
    line = p.log.wait_for(lambda l: "serving Prometheus metrics" in l and l, what="metrics line")
    addr = re.search(r"metrics=(\S+)", line).group(1)
    url = f"http://{addr}/metrics"

    before = samples(scrape(url))
    assert value(before, "socksng_sessions_total", command="connect", outcome="completed") == 0

    creds = f"{USER}:{PASSWORD}"
    for i in range(3):
        r = curl("--socks5-hostname", p.hostport, "--proxy-user", creds,
                 f"http://localhost:{http_target.port}/blob?tag=metrics{i}",
                 output=tmp_path / f"b{i}")
        assert r.returncode == 0, r.stderr
    r = curl("--socks5-hostname", p.hostport, "--proxy-user", creds,
             f"http://127.0.0.1:{denied_port}/", output=tmp_path / "x")
    assert r.returncode != 0
    for _ in range(2):
        r = curl("--socks5-hostname", p.hostport, "--proxy-user", f"{USER}:wrong",
                 f"http://localhost:{http_target.port}/", output=tmp_path / "y")
        assert r.returncode != 0
    # Every session has ended once its line is written: wait for all six.
    seen = []

    def six_sessions(line):
        s = parse_session(line)
        if s:
            seen.append(s)
        return len(seen) >= 6 or None

    p.log.wait_for(six_sessions, what="six session lines")

    after = samples(scrape(url))
    assert value(after, "socksng_sessions_total", command="connect", outcome="completed") == 3
    assert value(after, "socksng_sessions_total", command="connect", outcome="refused") == 1
    # The failed logins end in their handshake, before any command.
    assert value(after, "socksng_sessions_total", command="-", outcome="handshake-failed") == 2
    assert value(after, "socksng_auth_failures_total") == 2
    assert value(after, "socksng_sessions_active", command="connect") == 0
    down = value(after, "socksng_relayed_bytes_total", direction="down")
    up = value(after, "socksng_relayed_bytes_total", direction="up")
    assert down >= 3 * len(http_target.body), down
    # The same bytes as the session lines say, to the byte.
    assert down == sum(int(s["bytes_down"]) for s in seen), (down, seen)
    assert up == sum(int(s["bytes_up"]) for s in seen), (up, seen)
    # Handshakes that reached a request: the three downloads and the refusal.
    assert value(after, "socksng_handshake_seconds_count") == 4
    assert value(after, "socksng_listeners") == 0

    r = run(["curl", "-q", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}",
             "--max-time", "10", f"http://{addr}/other"])
    assert r.stdout.decode() == "404"
