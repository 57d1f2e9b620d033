"""Fixtures for the socksngd interop tests.

Run from the repository root after `cargo build -p socksngd`:

    python3 -m pytest -q tests/interop

SOCKSNGD=/path/to/socksngd selects another binary (a release build, say). The tests need
curl, OpenBSD netcat, PySocks and, for the network-namespace test, root and iproute2.
"""

import socket

import pytest

from interop_support import (
    Child,
    HttpTarget,
    IO_TIMEOUT,
    PASSWORD,
    USER,
    TcpTarget,
    UdpEchoTarget,
    _CountHandler,
    _EchoHandler,
    proxy_config,
    socksngd_passwd,
    start_socksngd,
)

@pytest.fixture(autouse=True)
def _bounded_sockets():
    """Every socket made during a test (PySocks makes some internally) times out instead of
    hanging the suite."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(IO_TIMEOUT)
    yield
    socket.setdefaulttimeout(old)


@pytest.fixture
def start_proxy(tmp_path):
    """Factory: start_proxy(cfg=None, name=..., netns=..., **proxy_config kwargs) -> Proxy.

    Every socksngd started is stopped at teardown (SIGTERM, bounded wait, SIGKILL), and the
    test errors if one died before teardown, did not exit 0 on SIGTERM, or panicked."""
    started = []

    def start(cfg=None, name=None, netns=None, **kwargs):
        if cfg is None:
            cfg = proxy_config(**kwargs)
        name = name or f"socksngd{len(started)}"
        p = start_socksngd(cfg, tmp_path, name=name, netns=netns)
        started.append(p)
        return p

    yield start

    problems = []
    for p in started:
        if p.stop_status == "running":  # else the test stopped it and checked the exit itself
            died = p.proc.poll()
            rc = p.stop()
            if died is not None:
                problems.append(f"{p.name} exited during the test with status {died}")
            elif rc != 0:
                problems.append(f"{p.name} exited with status {rc} after SIGTERM")
        if any("panicked" in line for line in p.log.lines()):
            problems.append(f"{p.name} panicked")
        print(f"----- {p.name} log -----\n{p.log.text()}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def proxy(start_proxy):
    """No authentication, SOCKS4 on, loopback destinations allowed."""
    return start_proxy(name="noauth")


@pytest.fixture(scope="session")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users"
    socksngd_passwd(path, USER, PASSWORD)
    return path


@pytest.fixture
def password_proxy(start_proxy, users_file):
    """Username/password only, loopback destinations allowed."""
    return start_proxy(name="password", methods=["password"], users_file=users_file)


@pytest.fixture(scope="session")
def http_target():
    t = HttpTarget()
    yield t
    t.close()


@pytest.fixture
def http6_target(http_target):
    if not http_target.has_ipv6:
        pytest.skip("this host has no IPv6 loopback (::1 cannot be bound)")
    return http_target


@pytest.fixture(scope="session")
def echo_target():
    t = TcpTarget(_EchoHandler)
    yield t
    t.close()


@pytest.fixture(scope="session")
def count_target():
    t = TcpTarget(_CountHandler)
    yield t
    t.close()


@pytest.fixture(scope="session")
def udp_target():
    t = UdpEchoTarget()
    yield t
    t.close()


@pytest.fixture
def children():
    """Factory for `Child`; everything started is stopped at teardown, its output printed. A
    peer that died before teardown fails the test."""
    started = []

    def start(*args, **kwargs):
        c = Child(*args, **kwargs)
        started.append(c)
        return c

    yield start
    died = []
    for c in reversed(started):
        if c.proc.poll() is not None and not getattr(c, "stopped", False):
            died.append(f"{c.name} exited during the test with status {c.proc.returncode}")
        c.stop()
        if c.log:
            print(f"----- {c.name} -----\n{c.log.text()}")
    if died:
        pytest.fail("; ".join(died))
