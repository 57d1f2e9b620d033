"""Helpers for the socksngd interop tests: running socksngd and reading its log, the target
servers the proxied clients talk to, and running client programs with bounded timeouts.

Everything here talks to loopback addresses only (or to addresses inside network namespaces
that a test creates itself). Nothing waits by sleeping: readiness is taken from socksngd's
log lines, from a child's "READY" line, or from sockets that are already listening before
anything connects to them.
"""

import errno
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
SOCKSNGD = Path(os.environ.get("SOCKSNGD") or REPO / "target" / "debug" / "socksngd")

STARTUP_TIMEOUT = 20.0  # socksngd logging its listen line(s)
LOG_TIMEOUT = 15.0  # a session line appearing once the client is done
IO_TIMEOUT = 15.0  # any single socket operation
PROC_TIMEOUT = 45.0  # any client program as a whole
CURL_MAX_TIME = 30  # curl's own --max-time, below PROC_TIMEOUT so curl reports it itself
STOP_TIMEOUT = 10.0  # socksngd exiting after SIGTERM

# curl's exit code for "the SOCKS proxy handshake failed" (CURLE_PROXY).
CURL_PROXY_ERROR = 97

USER = "alice"
PASSWORD = "c0rrect-horse"

LOOPBACK_ALLOW = {"action": "allow", "to": ["127.0.0.0/8", "::1/128"]}


def clean_env(**extra):
    """The environment for child processes: no proxy variables (curl would obey NO_PROXY or
    ALL_PROXY) and no RUST_LOG (it overrides socksngd's log_level and could hide the lines the
    tests read)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k != "RUST_LOG"
    }
    env.update(extra)
    return env


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Configuration


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. [ng] served = [{ to = [...] }]
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg):
    """Writes the subset of TOML socksngd configurations use: top-level keys, tables and
    arrays of tables, one level deep."""
    top, tables, arrays = [], [], []
    for key, value in cfg.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            arrays.append((key, value))
        else:
            top.append(f"{key} = {_toml_value(value)}")
    out = top[:]
    for key, table in tables:
        out.append(f"\n[{key}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    for key, items in arrays:
        for item in items:
            out.append(f"\n[[{key}]]")
            out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
    return "\n".join(out) + "\n"


def proxy_config(
    listen=("127.0.0.1:0",),
    methods=("none",),
    users_file=None,
    socks4=True,
    rules=(LOOPBACK_ALLOW,),
    timeouts=None,
    clients=("127.0.0.0/8", "::1/128"),
    extra=None,
):
    """A socksngd configuration as a dict (see `to_toml`). By default: no authentication,
    SOCKS4 on, loopback clients, and loopback destinations explicitly allowed (the built-in
    policy refuses destinations on the proxy host)."""
    auth = {"methods": list(methods), "socks4": socks4}
    if users_file is not None:
        auth["users_file"] = str(users_file)
    t = {"handshake": "10s", "connect": "10s", "shutdown_grace": "2s"}
    t.update(timeouts or {})
    cfg = {
        "listen": list(listen),
        "log_level": "info",
        "workers": 2,
        "auth": auth,
        "access": {"clients": list(clients), "default": "allow"},
        "timeouts": t,
    }
    cfg.update(extra or {})
    if rules:
        cfg["rules"] = [dict(r) for r in rules]
    return cfg


# --------------------------------------------------------------------------------------------
# socksngd's log


_FIELD_RE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _unquote(raw):
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        try:
            return json.loads(raw)
        except ValueError:  # a Rust escape JSON does not know, e.g. \u{1b}
            return raw[1:-1]
    return raw


def parse_session(line):
    """Fields of a `session` log line as a dict of strings, or None for other lines.
    `outcome` is the last field and runs to the end of the line."""
    at = line.find(" session client=")
    if at < 0:
        return None
    rest = line[at + len(" session ") :]
    fields = {}
    pos = 0
    while pos < len(rest):
        m = _FIELD_RE.match(rest, pos)
        if not m:
            break
        key, raw = m.group(1), m.group(2)
        if key == "outcome":
            fields[key] = _unquote(rest[m.start(2) :])
            break
        fields[key] = _unquote(raw)
        pos = m.end()
        while pos < len(rest) and rest[pos] == " ":
            pos += 1
    return fields


class LogReader:
    """Collects a child's stderr lines in a thread and lets tests wait for a line."""

    def __init__(self, stream):
        self._lines = []
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream):
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def lines(self):
        with self._cond:
            return list(self._lines)

    def text(self):
        return "\n".join(self.lines())

    def mark(self):
        """Position to pass as `start` to only see lines logged from now on."""
        with self._cond:
            return len(self._lines)

    def wait_for(self, match, timeout=LOG_TIMEOUT, start=0, what=None):
        """Waits until `match(line)` returns something truthy for a line at index >= start
        and returns that value. Fails when the deadline passes or the stream ends first."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self._lines):
                    found = match(self._lines[i])
                    if found:
                        return found
                    i += 1
                if self._closed:
                    raise AssertionError(
                        f"socksngd's log ended without {what or 'the expected line'}:\n"
                        + "\n".join(self._lines)
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {what or 'expected line'} in socksngd's log within {timeout}s:\n"
                        + "\n".join(self._lines)
                    )
                self._cond.wait(remaining)

    def join(self, timeout):
        self._thread.join(timeout)


def terminate(proc):
    """SIGTERM, a bounded wait, then SIGKILL. Returns the exit status (None if killed)."""
    rc = proc.poll()
    if rc is None:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
            rc = None
    return rc


def _parse_sockaddr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Proxy:
    """A running socksngd."""

    def __init__(self, name, proc, log, addrs, config_path):
        self.name = name
        self.proc = proc
        self.log = log
        self.addrs = addrs  # [(host, port)] in listen order
        self.config_path = config_path
        self.stop_status = "running"  # exit status once stop() has run

    @property
    def host(self):
        return self.addrs[0][0]

    @property
    def port(self):
        return self.addrs[0][1]

    @property
    def hostport(self):
        """host:port as curl and nc take it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def sessions(self):
        return [s for s in map(parse_session, self.log.lines()) if s]

    def wait_session(self, timeout=LOG_TIMEOUT, start=0, **want):
        """Waits for a session line whose fields equal `want` (as strings) and returns its
        fields."""
        want = {k: str(v) for k, v in want.items()}

        def match(line):
            s = parse_session(line)
            if s and all(s.get(k) == v for k, v in want.items()):
                return s
            return None

        return self.log.wait_for(match, timeout=timeout, start=start, what=f"session line {want}")

    def stop(self):
        """SIGTERM, a bounded wait, then SIGKILL. Returns the exit status (None if killed)."""
        rc = terminate(self.proc)
        self.log.join(STOP_TIMEOUT)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.stop_status = rc
        return rc


_LISTEN_RE = re.compile(r"accepting SOCKS connections.* listen=(\S+)")


def start_socksngd(cfg, directory, name="socksngd", netns=None):
    """Writes `cfg` (a dict or TOML text) to DIRECTORY/NAME.toml, starts socksngd on it and
    waits for one listen line per listen address."""
    if not SOCKSNGD.is_file():
        raise AssertionError(
            f"socksngd binary not found at {SOCKSNGD}: build it with `cargo build -p socksngd` "
            "or set SOCKSNGD to its path"
        )
    text = cfg if isinstance(cfg, str) else to_toml(cfg)
    # One listen line per plain address, then one per TLS-only address ([tls] listen).
    expected = (
        len(cfg["listen"]) + len((cfg.get("tls") or {}).get("listen", []))
        if isinstance(cfg, dict)
        else 1
    )
    path = Path(directory) / f"{name}.toml"
    path.write_text(text)
    argv = [str(SOCKSNGD), "--config", str(path)]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    log = LogReader(proc.stderr)
    proxy = Proxy(name, proc, log, [], path)
    try:
        addrs = []

        def listen_line(line):
            m = _LISTEN_RE.search(line)
            if m:
                addrs.append(_parse_sockaddr(m.group(1)))
                return len(addrs) == expected
            return False

        log.wait_for(listen_line, timeout=STARTUP_TIMEOUT, what="listen line")
    except BaseException:
        proxy.stop()
        raise
    proxy.addrs = addrs
    return proxy


def socksngd_passwd(users_file, name, password):
    r = subprocess.run(
        [str(SOCKSNGD), "passwd", "--users-file", str(users_file), name],
        input=(password + "\n").encode(),
        capture_output=True,
        timeout=120,  # argon2 in a debug build takes about a second
        env=clean_env(),
    )
    assert r.returncode == 0, f"socksngd passwd failed: {r.stderr.decode(errors='replace')}"


# --------------------------------------------------------------------------------------------
# Client programs


def run(argv, input=None, timeout=PROC_TIMEOUT, netns=None, env=None):
    """Runs a program to completion with a bounded time (it is killed when the time is up,
    and the test fails with TimeoutExpired). `env`: variables added to `clean_env()`."""
    if netns:
        argv = ["ip", "netns", "exec", netns] + list(argv)
    return subprocess.run(
        [str(a) for a in argv],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=clean_env(**(env or {})),
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def sh(*argv):
    """Runs a setup command (ip, say) that must succeed; returns its output."""
    r = subprocess.run(argv, capture_output=True, timeout=PROC_TIMEOUT)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def quiet(*argv):
    """Cleanup step: errors are expected when the thing is already gone."""
    try:
        subprocess.run(argv, capture_output=True, timeout=PROC_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def recv_exact(sock, n):
    """Reads exactly n bytes; fails on EOF."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


def curl(*args, output=None, headers=None, netns=None):
    """curl with its configuration file ignored (-q), the proxy environment overridden, and
    bounded times. Returns the CompletedProcess."""
    argv = [
        "curl",
        "-q",
        "--silent",
        "--show-error",
        "--noproxy",
        "",
        "--connect-timeout",
        "10",
        "--max-time",
        str(CURL_MAX_TIME),
    ]
    if output is not None:
        argv += ["--output", str(output)]
    if headers is not None:
        argv += ["--dump-header", str(headers)]
    argv += list(args)
    return run(argv, netns=netns)


def read_ready_line(proc, timeout=STARTUP_TIMEOUT):
    """Reads the first stdout line of a helper child that announces itself with
    "READY <port> [<port>...]", with a deadline. Returns the port, or the list of them."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"helper gave no READY line within {timeout}s: {buf!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"helper exited before READY: {buf!r} {err}")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("READY "), line
    ports = [int(x) for x in line.split()[1:]]
    return ports[0] if len(ports) == 1 else ports


# --------------------------------------------------------------------------------------------
# Target servers


class _QuietHTTPServer(HTTPServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self):
        # HTTPServer.server_bind would look up the FQDN of the address (a DNS query for ::1
        # on hosts without an /etc/hosts entry). Not wanted.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def process_request(self, request, client_address):
        t = threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True)
        t.start()

    def _serve_one(self, request, client_address):
        try:
            request.settimeout(IO_TIMEOUT)
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        pass  # a client that hangs up early is no server error; tests check what arrived


class _HTTP4(_QuietHTTPServer):
    address_family = socket.AF_INET


class _HTTP6(_QuietHTTPServer):
    address_family = socket.AF_INET6


class _BlobHandler(BaseHTTPRequestHandler):
    """GET /blob[?tag=...] answers the target's body; everything else 404."""

    def do_GET(self):
        target = self.server.target
        url = urlsplit(self.path)
        tag = parse_qs(url.query).get("tag", [None])[0]
        target.record(self.server.family_name, url.path, tag, self.client_address)
        if url.path != "/blob":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(target.body)))
        self.send_header("X-Listener", self.server.family_name)
        self.end_headers()
        self.wfile.write(target.body)

    def log_message(self, *args):
        pass


def bind_loopback_pair(create, port_of):
    """Binds something on 127.0.0.1 and on [::1] with the same port, so that `localhost`
    reaches it whichever family the resolver answers first (hosts files differ: some map
    localhost to ::1 as well). `create(host, port)` returns a bound object with a
    `server_close` or `close` method, or raises OSError. Returns ([objects], port); only the
    IPv4 one when the host has no IPv6 loopback."""
    for _ in range(50):
        v4 = create("127.0.0.1", 0)
        port = port_of(v4)
        try:
            v6 = create("::1", port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                getattr(v4, "server_close", getattr(v4, "close", None))()
                continue
            return [v4], port
        return [v4, v6], port
    raise AssertionError("could not bind 127.0.0.1 and ::1 on one port")


def _bind_server(cls, address, handler):
    srv = cls(address, handler, bind_and_activate=False)
    try:
        srv.server_bind()
    except OSError:
        srv.server_close()
        raise
    return srv


class HttpTarget:
    """An HTTP server on 127.0.0.1 and (when the host has IPv6 loopback) on [::1], both on the
    same port so that `localhost` works whichever family it resolves to. It serves a random
    body of known SHA-256 and records every request."""

    def __init__(self, size=1 << 20):
        self.body = os.urandom(size)
        self.sha256 = sha256(self.body)
        self.requests = []
        self._lock = threading.Lock()
        self.servers = []
        self.port = None
        self.has_ipv6 = False
        self._bind()
        self._threads = []
        for srv in self.servers:
            srv.target = self
            srv.server_activate()
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self._threads.append(t)

    def _bind(self):
        def create(host, port):
            cls = _HTTP6 if ":" in host else _HTTP4
            srv = _bind_server(cls, (host, port), _BlobHandler)
            srv.family_name = "ipv6" if ":" in host else "ipv4"
            return srv

        self.servers, self.port = bind_loopback_pair(create, lambda srv: srv.server_address[1])
        self.has_ipv6 = len(self.servers) == 2

    def record(self, family, path, tag, client):
        with self._lock:
            self.requests.append({"family": family, "path": path, "tag": tag, "client": client})

    def tagged(self, tag):
        with self._lock:
            return [r for r in self.requests if r["tag"] == tag]

    def close(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(STOP_TIMEOUT)


class _ThreadedTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass


class _ThreadedTCP6(_ThreadedTCP):
    address_family = socket.AF_INET6


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.server.owner.peers.append(tuple(self.client_address[:2]))
        sock = self.request
        sock.settimeout(IO_TIMEOUT)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class _CountHandler(socketserver.BaseRequestHandler):
    """Reads to EOF, then answers "<byte count> <sha256>\\n": an answer only comes once the
    client's half-close has arrived."""

    def handle(self):
        self.server.owner.peers.append(tuple(self.client_address[:2]))
        sock = self.request
        sock.settimeout(IO_TIMEOUT)
        h = hashlib.sha256()
        n = 0
        while True:
            data = sock.recv(65536)
            if not data:
                break
            h.update(data)
            n += len(data)
        sock.sendall(f"{n} {h.hexdigest()}\n".encode())
        sock.shutdown(socket.SHUT_WR)


class TcpTarget:
    """A threaded TCP server (echo or count) on 127.0.0.1 and [::1], same port; records peer
    addresses as (host, port)."""

    def __init__(self, handler):
        self.peers = []

        def create(host, port):
            return _bind_server(_ThreadedTCP6 if ":" in host else _ThreadedTCP, (host, port), handler)

        self.servers, self.port = bind_loopback_pair(create, lambda srv: srv.server_address[1])
        self._threads = []
        for srv in self.servers:
            srv.owner = self
            srv.server_activate()
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(STOP_TIMEOUT)


class UdpEchoTarget:
    """UDP on 127.0.0.1 and [::1] (same port): answers each datagram with b"ECHO " + datagram;
    records (sender (host, port), datagram)."""

    def __init__(self):
        def create(host, port):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            return sock

        self.socks, self.port = bind_loopback_pair(create, lambda s: s.getsockname()[1])
        self.received = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self._threads:
            t.start()

    def _serve(self, sock):
        sock.settimeout(0.2)  # only how often the loop looks at the stop flag
        while not self._stop.is_set():
            try:
                data, src = sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.received.append((tuple(src[:2]), data))
            try:
                sock.sendto(b"ECHO " + data, src)
            except OSError:
                pass

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(STOP_TIMEOUT)
        for s in self.socks:
            s.close()


def exchange(sock, payload, timeout=IO_TIMEOUT):
    """Sends `payload` from a thread, half-closes, and reads until EOF in this one (so a large
    echo cannot deadlock on full buffers). Returns the bytes read."""
    sock.settimeout(timeout)
    errors = []

    def send():
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
    t.join(timeout)
    assert not t.is_alive(), "sender thread still blocked"
    assert not errors, errors
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------
# Raw SOCKS5 and the audit log (used by test_audit.py and test_reload.py)


def encode_addr(host, port):
    """ATYP + address + port: an IPv4 or IPv6 literal, else a name."""
    for family, atyp in ((socket.AF_INET, 1), (socket.AF_INET6, 4)):
        try:
            return bytes([atyp]) + socket.inet_pton(family, host) + port.to_bytes(2, "big")
        except OSError:
            pass
    name = host.encode()
    return bytes([3, len(name)]) + name + port.to_bytes(2, "big")


def read_addr(sock):
    """Reads ATYP + address + port from a socket; returns (host, port)."""
    atyp = recv_exact(sock, 1)[0]
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, recv_exact(sock, 4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, recv_exact(sock, 16))
    elif atyp == 3:
        host = recv_exact(sock, recv_exact(sock, 1)[0]).decode()
    else:
        raise AssertionError(f"unknown ATYP {atyp}")
    return host, int.from_bytes(recv_exact(sock, 2), "big")


def socks5_login(sock, user=None, password=None):
    """The SOCKS5 greeting, with an RFC 1929 login when `user` is given. Returns 0 when the
    client may send its request, else the failure (the login status, or 0xFF when the server
    accepted no offered method)."""
    sock.sendall(b"\x05\x01" + (b"\x02" if user is not None else b"\x00"))
    method = recv_exact(sock, 2)
    assert method[0] == 5, method
    if method[1] == 0xFF:
        return 0xFF
    if user is None:
        assert method[1] == 0, method
        return 0
    assert method[1] == 2, method
    u, p = user.encode(), password.encode()
    sock.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
    reply = sock.recv(2)
    assert len(reply) == 2, f"no login reply: {reply!r}"
    return reply[1]


def socks5_request(sock, cmd, host, port, rsv=0):
    """Sends one request (CMD 1 CONNECT, 3 UDP ASSOCIATE, ...); returns (reply code, bound
    (host, port))."""
    sock.sendall(bytes([5, cmd, rsv]) + encode_addr(host, port))
    head = recv_exact(sock, 3)
    assert head[0] == 5, head
    return head[1], read_addr(sock)


def socks5_open(proxy, host, port, user=None, password=None, source=None, timeout=IO_TIMEOUT):
    """A connection to `proxy` that asks for a CONNECT to host:port (after a login when `user`
    is given). Returns (socket, reply code); a failed login is returned as reply 0x100 +
    status. `source`: the client's own address to bind."""
    fam = socket.AF_INET6 if ":" in proxy.host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source is not None:
        s.bind((source, 0))
    s.connect((proxy.host, proxy.port))
    status = socks5_login(s, user, password)
    if status != 0:
        return s, 0x100 + status
    rep, _ = socks5_request(s, 1, host, port)
    return s, rep


def read_jsonl(path):
    """The records of a JSON-lines file (an audit log); a line that is not JSON fails."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AssertionError(f"{path}:{n}: not JSON ({e}): {line!r}") from None
    return out


def count_session_lines(proxy, start=0):
    return sum(1 for line in proxy.log.lines()[start:] if parse_session(line))


def wait_session_count(proxy, n, start=0, timeout=LOG_TIMEOUT):
    """Waits until at least n session lines were logged from `start` on."""
    seen = [0]

    def match(line):
        if parse_session(line):
            seen[0] += 1
        return seen[0] >= n or None

    proxy.log.wait_for(match, timeout=timeout, start=start, what=f"{n} session lines")


# --------------------------------------------------------------------------------------------
# Peer programs


def need(*programs):
    """The path of each program; skips the test when one is missing (fails under CI, where
    scripts/test-all installs them)."""
    paths = []
    for p in programs:
        found = shutil.which(p) or next(
            (str(d / p) for d in (Path("/usr/sbin"), Path("/sbin")) if (d / p).is_file()), None
        )
        if not found:
            message = f"{p} is not installed"
            if os.environ.get("CI"):
                pytest.fail(message + " (CI installs it: see scripts/test-all)")
            pytest.skip(message)
        paths.append(found)
    return paths


def free_port():
    """A port that was free a moment ago on 127.0.0.1, for programs that must be told theirs
    in advance (a socksngd whose address another one names, ssh -D)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A peer program we started (danted, sshd, ssh), in its own session; its stderr read
    line by line (`log`) unless it goes to a file. Stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name, argv, stdout=subprocess.DEVNULL, stderr_path=None):
        self.name = name
        self._err = open(stderr_path, "wb") if stderr_path else None
        self.proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=self._err or subprocess.PIPE,
            env=clean_env(),
            start_new_session=True,
        )
        self.log = None if stderr_path else LogReader(self.proc.stderr)

    def stop(self):
        self.stopped = True  # by the test: not a death
        rc = terminate(self.proc)
        if self.log:
            self.log.join(STOP_TIMEOUT)
        for f in (self.proc.stdout, self.proc.stderr, self._err):
            if f and not f.closed:
                f.close()
        return rc


# --------------------------------------------------------------------------------------------
# Network namespaces


# An HTTP service answering every request with its name and the client's address, and an
# echo service that first sends its name; both on the address given.
NS_SERVICE = r"""
import socket, socketserver, sys

name, addr = sys.argv[1], sys.argv[2]

class Whoami(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(15)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        body = ("%s client %s\n" % (name, self.client_address[0])).encode()
        s.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % len(body) + body)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(15)
        s.sendall(name.encode() + b"\n")
        while True:
            data = s.recv(65536)
            if not data:
                break
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    def handle_error(self, request, client_address):
        pass

http = Server((addr, 0), Whoami)
echo = Server((addr, 0), Echo)
import threading
threading.Thread(target=echo.serve_forever, daemon=True).start()
print("READY", http.server_address[1], echo.server_address[1], flush=True)
http.serve_forever()
"""


class Topology:
    """Network namespaces joined by veth pairs, their /etc/netns files and the processes
    started in them; `close` removes all of it."""

    def __init__(self, tag):
        self.pid = os.getpid()
        self.tag = tag
        self.namespaces = []
        self.links = []
        self.procs = []
        self.netns_etc = Path("/etc/netns")
        self.made_netns_etc = not self.netns_etc.exists()

    def ns(self, role):
        name = f"sng-{self.tag}{role}-{self.pid}"
        quiet("ip", "netns", "del", name)  # a leftover of a killed run with the same pid
        shutil.rmtree(self.netns_etc / name, ignore_errors=True)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, code, ns_a, addr_a, ns_b, addr_b, prefix=24):
        """A veth pair, created inside the two namespaces (its names, at most 15 characters,
        carry our pid, so runs in parallel do not collide)."""
        a, b = f"st{code}a{self.pid}", f"st{code}b{self.pid}"
        assert len(a) <= 15 and len(b) <= 15, (a, b)
        quiet("ip", "link", "del", a)
        self.links.append(a)
        sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
           "netns", ns_b)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def etc(self, ns, hosts):
        etc = self.netns_etc / ns
        etc.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ip in hosts.items()]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        # A resolver inside the namespace where nothing answers: no query leaves it.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")

    def service(self, ns, name, addr, script=None):
        """A Python service `script` (default NS_SERVICE: whoami over HTTP and an echo) run in
        `ns` with `name` and `addr` as arguments; returns what its READY line says."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script or NS_SERVICE, name, addr],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            start_new_session=True,
        )
        self.procs.append(p)
        return read_ready_line(p)

    def close(self):
        for p in self.procs:
            terminate(p)
            p.stdout.close()
            p.stderr.close()
        for ns in self.namespaces:
            quiet("ip", "netns", "del", ns)
            shutil.rmtree(self.netns_etc / ns, ignore_errors=True)  # named after our pid
        for link in self.links:
            quiet("ip", "link", "del", link)  # only still here if a move failed
        if (self.made_netns_etc and self.netns_etc.exists()
                and not any(self.netns_etc.iterdir())):
            self.netns_etc.rmdir()


def topology(tag, build):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and /etc/netns/<ns>")
    t = Topology(tag)
    try:
        build(t)
        yield t
    finally:
        t.close()


# --------------------------------------------------------------------------------------------
# Certificates


CA_CNF = """\
[req]
prompt = no
distinguished_name = dn
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

LEAF_CNF = """\
[req]
prompt = no
distinguished_name = dn
[dn]
CN = {cn}
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


class Cert:
    def __init__(self, pem, key):
        self.pem, self.key = pem, key


class Pki:
    """A throwaway CA hierarchy made with the openssl CLI (EC P-256, two days)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.serial = 1

    def _openssl(self, *args):
        r = subprocess.run(
            ["openssl", *map(str, args)], capture_output=True, timeout=PROC_TIMEOUT, env=clean_env()
        )
        assert r.returncode == 0, f"openssl {args[0]}: {r.stderr.decode(errors='replace')}"

    def ca(self, name):
        cnf = self.dir / f"{name}.cnf"
        cnf.write_text(CA_CNF.format(cn=f"socksng test {name}"))
        cert = Cert(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        self._openssl(
            "req", "-x509", "-new", "-config", cnf, "-extensions", "v3_ca",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", cert.key, "-out", cert.pem, "-days", "2",
        )
        return cert

    def leaf(self, ca, name, dns=(), ips=()):
        san = ", ".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        cnf = self.dir / f"{name}.cnf"
        cnf.write_text(LEAF_CNF.format(cn=(list(dns) or list(ips))[0], san=san))
        csr = self.dir / f"{name}.csr"
        cert = Cert(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        self._openssl(
            "req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", cert.key, "-out", csr,
        )
        self.serial += 1
        self._openssl(
            "x509", "-req", "-in", csr, "-CA", ca.pem, "-CAkey", ca.key,
            "-set_serial", self.serial, "-days", "2", "-extfile", cnf, "-extensions", "v3_leaf",
            "-out", cert.pem,
        )
        return cert
