"""Password logins checked by PAM (`auth.pam_service`): a system user the test creates logs in
through socksngd with the password set by chpasswd and reaches a target; a wrong password and
a locked account (usermod -L) are refused, and the failures are counted by the login throttle
as any other. The test writes its own PAM service file (pam_unix) and removes it, with the
user, afterwards. Needs root and a socksngd built with the `pam` feature (scripts/test-all
builds it so)."""

import os
import secrets
import subprocess

import pytest
import socks

from interop_support import IO_TIMEOUT, proxy_config

SERVICE = "socksngd-interop-test"


@pytest.fixture
def system_user():
    if os.geteuid() != 0:
        pytest.skip("creating a system user needs root")
    name = "sngpam" + secrets.token_hex(3)
    password = "pw-" + secrets.token_hex(8)
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
    )
    pam_file = f"/etc/pam.d/{SERVICE}"
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
        with open(pam_file, "w") as f:
            f.write("auth required pam_unix.so\naccount required pam_unix.so\n")
        yield name, password
    finally:
        subprocess.run(["userdel", name], check=False)
        if os.path.exists(pam_file):
            os.remove(pam_file)


def fetch_echo(proxy, user, password, target):
    s = socks.socksocket()
    s.set_proxy(socks.SOCKS5, proxy.host, proxy.port, username=user, password=password)
    s.settimeout(IO_TIMEOUT)
    try:
        s.connect(("127.0.0.1", target.port))
        s.sendall(b"through pam")
        got = b""
        while len(got) < 11:
            chunk = s.recv(11 - len(got))
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def test_a_system_user_logs_in_through_pam(start_proxy, system_user, echo_target):
    name, password = system_user
    cfg = proxy_config(methods=["password"], socks4=False)
    cfg["auth"]["pam_service"] = SERVICE
    p = start_proxy(cfg, name="pam")

    assert fetch_echo(p, name, password, echo_target) == b"through pam"
    p.wait_session(user=name, command="connect", outcome_kind="completed")

    with pytest.raises(socks.ProxyError):
        fetch_echo(p, name, "not-" + password, echo_target)
    with pytest.raises(socks.ProxyError):
        fetch_echo(p, "nosuchuser" + secrets.token_hex(2), password, echo_target)

    # A locked account is refused even with its password (pam_unix sees the locked hash).
    subprocess.run(["usermod", "-L", name], check=True)
    with pytest.raises(socks.ProxyError):
        fetch_echo(p, name, password, echo_target)
    subprocess.run(["usermod", "-U", name], check=True)
    assert fetch_echo(p, name, password, echo_target) == b"through pam"
