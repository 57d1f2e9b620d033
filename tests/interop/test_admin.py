"""The admin view over socksngd's control socket: `socksngd sessions` lists a running session
(user, client, command, target, bytes), `socksngd kill ID` ends it with a reset and the session
line says who ended it; the socket is mode 0600 and another user cannot use it."""

import json
import os
import stat
import subprocess

import pytest
import socks

from interop_support import (
    IO_TIMEOUT,
    PASSWORD,
    SOCKSNGD,
    USER,
    proxy_config,
    run,
)


def socksngd(*args):
    return run([str(SOCKSNGD), *args])


def test_sessions_are_listed_and_one_is_ended(start_proxy, users_file, echo_target, tmp_path):
    # A directory anyone may enter, so that only the socket's own mode keeps others out.
    public = tmp_path / "public"
    public.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(public, 0o755)
    sock_path = public / "admin.sock"
    cfg = proxy_config(methods=["password"], users_file=users_file,
                       extra={"admin": {"socket": str(sock_path)}})
    p = start_proxy(cfg, name="admin")
    p.log.wait_for(lambda l: "admin control socket ready" in l or None, what="admin socket")
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600

    held = socks.socksocket()
    held.set_proxy(socks.SOCKS5, p.host, p.port, username=USER, password=PASSWORD)
    held.settimeout(IO_TIMEOUT)
    held.connect(("127.0.0.1", echo_target.port))
    held.sendall(b"ping")
    assert held.recv(4) == b"ping"

    r = socksngd("--config", str(p.config_path), "sessions", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.decode().splitlines() if line]
    mine = [s for s in rows if s["command"] == "connect" and s["user"] == USER]
    assert len(mine) == 1, rows
    row = mine[0]
    assert row["target"] == f"127.0.0.1:{echo_target.port}", row
    assert row["client"] == f"127.0.0.1:{held.getsockname()[1]}", row
    assert row["bytes_up"] == 4 and row["bytes_down"] == 4, row
    table = socksngd("--config", str(p.config_path), "sessions")
    assert table.returncode == 0 and USER in table.stdout.decode(), table

    # Another user cannot reach the socket.
    nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "python3", "-c",
         "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
         str(sock_path)],
        capture_output=True, timeout=30,
    )
    if os.geteuid() == 0:
        assert nobody.returncode != 0 and b"PermissionError" in nobody.stderr, nobody

    r = socksngd("--config", str(p.config_path), "kill", str(row["id"]))
    assert r.returncode == 0, r.stderr
    with pytest.raises(ConnectionResetError):
        while held.recv(4096):
            pass
    s = p.wait_session(command="connect", user=USER)
    assert s["outcome"] == "ended by the administrator", s
    assert s["outcome_kind"] == "cut", s

    r = socksngd("--config", str(p.config_path), "kill", str(row["id"]))
    assert r.returncode != 0 and b"no session" in r.stderr, r
    held.close()
