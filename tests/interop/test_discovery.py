"""Discovery (draft section 10). Through DHCP, with real programs in network namespaces the test
makes: dnsmasq serves leases carrying the option exactly as `socksngd announce --dhcp` prints it
for dnsmasq; ISC dhclient takes a lease in a second namespace (its script replaced, so it
changes nothing outside the lease file); `socksng discover` reads the lease, finds the proxy and
what it serves, and a connection through the proxy found reaches a target behind it. Also: the
three lease formats; the PAC file (evaluated under node) and PvD JSON socksngd serves, over
HTTP and HTTPS; and a hostile announcement, which never overrides a configured route."""

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from interop_support import (
    SOCKSNGD,
    STARTUP_TIMEOUT,
    Pki,
    need,
    proxy_config,
    run,
    sh,
    to_toml,
    topology,
)

SOCKSNG = Path(os.environ.get("SOCKSNG") or SOCKSNGD.with_name("socksng"))
SERVER_IP, CLIENT_RANGE = "10.77.6.1", ("10.77.6.50", "10.77.6.60")


@pytest.fixture(scope="module")
def lan():
    def build(t):
        t.server = t.ns("s")
        t.client = t.ns("c")
        # The client's end gets no address: DHCP gives it one.
        t.link("d", t.server, SERVER_IP, t.client, "10.77.6.254")
        sh("ip", "-n", t.client, "addr", "flush", "dev", f"std{'b'}{t.pid}")
        t.etc(t.client, {})
        t.etc(t.server, {})
        t.http_port, _ = t.service(t.server, "behind-the-proxy", "127.0.0.1")

    yield from topology("dsc", build)


def test_dhcp_lease_announces_the_proxy_and_discover_uses_it(lan, start_proxy, children,
                                                              tmp_path):
    dnsmasq, dhclient = need("dnsmasq", "dhclient")
    proxy = start_proxy(proxy_config(listen=[f"{SERVER_IP}:0"], clients=["10.77.6.0/24"]),
                        name="lan-proxy", netns=lan.server)
    url = f"socks5h://{SERVER_IP}:{proxy.port}"

    # The DHCP server's configuration is what socksngd announce prints for dnsmasq.
    announce_cfg = tmp_path / "announce.toml"
    announce_cfg.write_text(to_toml({"listen": [f"{SERVER_IP}:{proxy.port}"],
                                     "access": {"clients": ["10.77.6.0/24"]},
                                     "auth": {"methods": ["password"], "users_file": "u"}}))
    r = run([SOCKSNGD, "--config", announce_cfg, "announce", "--dhcp"])
    assert r.returncode == 0, r.stderr
    option = next(l for l in r.stdout.decode().splitlines()
                  if l.startswith("dhcp-option-force=224,"))
    assert url in option, option
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(
        "port=0\nbind-interfaces\n"
        f"interface=std{'a'}{lan.pid}\n"
        f"dhcp-range={CLIENT_RANGE[0]},{CLIENT_RANGE[1]},1h\n"
        f"dhcp-leasefile={tmp_path / 'dnsmasq.leases'}\n"
        f"{option}\n"
    )
    server = children("dnsmasq", ["ip", "netns", "exec", lan.server, dnsmasq, "-k",
                                  "--log-facility=-", "--log-dhcp", "--user=root",
                                  f"--pid-file={tmp_path / 'dnsmasq.pid'}", "-C", conf])
    server.log.wait_for(lambda l: "DHCP, IP range" in l or None, timeout=STARTUP_TIMEOUT,
                        what="dnsmasq's DHCP line")

    leases = tmp_path / "dhclient.leases"
    r = run(["ip", "netns", "exec", lan.client, dhclient, "-1", "-lf", leases,
             "-pf", tmp_path / "dhclient.pid", "-sf", "/bin/true", f"std{'b'}{lan.pid}"],
            timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    text = leases.read_text()
    assert "option unknown-224" in text, text
    # dhclient's script is /bin/true: the test puts the leased address on the link itself.
    address = re.search(r"fixed-address ([0-9.]+);", text).group(1)
    sh("ip", "-n", lan.client, "addr", "add", f"{address}/24", "dev", f"std{'b'}{lan.pid}")

    r = run([SOCKSNG, "discover", "--lease-file", leases, "--json"], netns=lan.client)
    assert r.returncode == 0, r.stderr.decode()
    found = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [f["url"] for f in found] == [url], found
    assert found[0]["source"] == str(leases) and found[0]["protocol"] == "socks-ng", found
    assert found[0]["ranges"], found

    # Asking the DHCP server directly (DHCPINFORM) finds the same proxy.
    r = run([SOCKSNG, "discover", "--inform", f"std{'b'}{lan.pid}", "--lease-file", "/dev/null",
             "--json"], netns=lan.client)
    assert r.returncode == 0, r.stderr.decode()
    informed = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [f["url"] for f in informed] == [url], informed
    assert informed[0]["source"] == f"DHCPINFORM on std{'b'}{lan.pid} from {SERVER_IP}", informed

    # A connection through the proxy found reaches the target behind it.
    r = run(["curl", "-q", "-sS", "--max-time", "15", "--socks5-hostname",
             found[0]["url"].split("://", 1)[1], f"http://127.0.0.1:{lan.http_port}/"],
            netns=lan.client)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("behind-the-proxy client 127.0.0.1"), r.stdout
    proxy.wait_session(command="connect", outcome_kind="completed")

    # A hostile DHCP server replaces the first and announces a proxy of its own, which claims
    # (more narrowly) a range the client's configuration routes through the first proxy.
    server.stop()
    hostile = start_proxy(proxy_config(listen=[f"{SERVER_IP}:0"], clients=["10.77.6.0/24"],
                                       extra={"ng": {"served": [{"to": ["10.77.9.0/25",
                                                                        "198.51.100.0/24"]}]}}),
                          name="hostile-proxy", netns=lan.server)
    hostile_url = f"socks5h://{SERVER_IP}:{hostile.port}"
    conf.write_text(conf.read_text().replace(url, hostile_url)
                    .replace("dnsmasq.leases", "hostile.leases"))
    evil = children("hostile dnsmasq", ["ip", "netns", "exec", lan.server, dnsmasq, "-k",
                                        "--log-facility=-", "--user=root",
                                        f"--pid-file={tmp_path / 'hostile.pid'}", "-C", conf])
    evil.log.wait_for(lambda l: "DHCP, IP range" in l or None, timeout=STARTUP_TIMEOUT,
                      what="the hostile dnsmasq's DHCP line")
    hostile_leases = tmp_path / "hostile-dhclient.leases"
    r = run(["ip", "netns", "exec", lan.client, dhclient, "-1", "-lf", hostile_leases,
             "-pf", tmp_path / "dhclient2.pid", "-sf", "/bin/true", f"std{'b'}{lan.pid}"],
            timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    client_cfg = tmp_path / "client.toml"
    client_cfg.write_text(f'[[server]]\nname = "lan"\nurl = "{url}"\n'
                          'ranges = ["10.77.9.0/24"]\nask = false\n[options]\ncache_dir = ""\n')
    # Reported ...
    r = run([SOCKSNG, "discover", "--lease-file", hostile_leases, "--json"], netns=lan.client)
    assert [json.loads(l)["url"] for l in r.stdout.decode().splitlines()] == [hostile_url], r
    # ... and, even when learned proxies are used, it does not take the configured range.
    r = run([SOCKSNG, "--discover", "-c", client_cfg, "routes", "--json",
             "--lookup", "10.77.9.5:80", "--lookup", "198.51.100.7:80"],
            netns=lan.client, env={"SOCKSNG_LEASE_FILES": str(hostile_leases)})
    assert r.returncode == 0, r.stderr.decode()
    via = {l["target"]: l["via"] for l in json.loads(r.stdout)["lookups"]}
    assert via == {"10.77.9.5:80": "lan",
                   "198.51.100.7:80": f"learned:{SERVER_IP}:{hostile.port}"}, via


SERVER6, SERVER6_RANGE = "fd00:77:6::1", ("fd00:77:6::100", "fd00:77:6::1ff")


@pytest.fixture(scope="module")
def lan6():
    """An IPv6-only link: the DHCPv6 server (and proxy) in one namespace, the client in the
    other; duplicate address detection is off, so addresses are usable at once."""
    def build(t):
        t.server = t.ns("s")
        t.client = t.ns("c")
        for ns in (t.server, t.client):
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
               "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
        t.link("v", t.server, SERVER6, t.client, "fd00:77:6::2", prefix=64)
        t.etc(t.client, {})
        t.etc(t.server, {})
        t.http_port, _ = t.service(t.server, "behind-the-v6-proxy", "127.0.0.1")

    yield from topology("ds6", build)


def test_dhcpv6_lease_announces_the_proxy(lan6, start_proxy, children, tmp_path):
    """DHCPv6 (draft 10.3): dnsmasq sends the vendor option exactly as `socksngd announce
    --dhcp` prints it; ISC dhclient -6 takes the lease; `socksng discover` reads it, and a
    client on an IPv6-only link reaches an IPv4 service through the proxy found."""
    dnsmasq, dhclient = need("dnsmasq", "dhclient")
    proxy = start_proxy(proxy_config(listen=[f"[{SERVER6}]:0"], clients=["fd00:77:6::/64"]),
                        name="v6-proxy", netns=lan6.server)
    url = f"socks5h://[{SERVER6}]:{proxy.port}"
    announce_cfg = tmp_path / "announce.toml"
    announce_cfg.write_text(to_toml({"listen": [f"[{SERVER6}]:{proxy.port}"],
                                     "discovery": {"dhcpv6_enterprise": 64000}}))
    r = run([SOCKSNGD, "--config", announce_cfg, "announce", "--dhcp"])
    assert r.returncode == 0, r.stderr
    option = next(l for l in r.stdout.decode().splitlines()
                  if l.startswith("dhcp-option-force=option6:17,"))
    conf = tmp_path / "dnsmasq6.conf"
    conf.write_text(
        "port=0\nbind-interfaces\n"
        f"interface=st{'v'}a{lan6.pid}\n"
        f"dhcp-range={SERVER6_RANGE[0]},{SERVER6_RANGE[1]},64,1h\n"
        f"dhcp-leasefile={tmp_path / 'dnsmasq6.leases'}\n"
        f"{option}\n"
    )
    server = children("dnsmasq -6", ["ip", "netns", "exec", lan6.server, dnsmasq, "-k",
                                     "--log-facility=-", "--log-dhcp", "--user=root",
                                     f"--pid-file={tmp_path / 'dnsmasq6.pid'}", "-C", conf])
    server.log.wait_for(lambda l: "DHCPv6, IP range" in l or None, timeout=STARTUP_TIMEOUT,
                        what="dnsmasq's DHCPv6 line")
    leases = tmp_path / "dhclient6.leases"
    r = run(["ip", "netns", "exec", lan6.client, dhclient, "-6", "-1", "-lf", leases,
             "-pf", tmp_path / "dhclient6.pid", "-sf", "/bin/true", f"st{'v'}b{lan6.pid}"],
            timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert "option dhcp6.vendor-opts" in leases.read_text(), leases.read_text()

    # The network's enterprise number must be the one the client looks for.
    r = run([SOCKSNG, "discover", "--lease-file", leases, "--json"], netns=lan6.client)
    assert r.returncode == 0 and r.stdout == b"", (r.stdout, r.stderr)
    r = run([SOCKSNG, "discover", "--lease-file", leases, "--dhcpv6-enterprise", "64000",
             "--json"], netns=lan6.client)
    assert r.returncode == 0, r.stderr.decode()
    found = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [(f["url"], f["protocol"]) for f in found] == [(url, "socks-ng")], found

    # Asking the DHCPv6 server directly (an Information-Request) finds the same proxy; the
    # link has no IPv4 address, so there is no DHCPINFORM, and that is no error.
    r = run([SOCKSNG, "discover", "--inform", f"st{'v'}b{lan6.pid}", "--dhcpv6-enterprise",
             "64000", "--lease-file", "/dev/null", "--json"], netns=lan6.client)
    assert r.returncode == 0, r.stderr.decode()
    informed = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [f["url"] for f in informed] == [url], informed
    assert informed[0]["source"].startswith(
        f"DHCPv6 Information-Request on st{'v'}b{lan6.pid} from fe80::"), informed

    # With --discover, a client on the IPv6-only link reaches an IPv4 service through it.
    r = run([SOCKSNG, "--discover", "connect", f"127.0.0.1:{lan6.http_port}"],
            input=b"GET / HTTP/1.0\r\n\r\n", netns=lan6.client,
            env={"SOCKSNG_LEASE_FILES": str(leases), "SOCKSNG_DHCPV6_ENTERPRISE": "64000",
                 "XDG_CACHE_HOME": str(tmp_path / "cache"),
                 "XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert r.returncode == 0, r.stderr.decode()
    assert b"behind-the-v6-proxy" in r.stdout, r.stdout
    proxy.wait_session(command="connect", outcome_kind="completed")


def test_discover_reads_all_lease_formats(tmp_path):
    """The three DHCP clients' lease formats, written as they write them."""
    listed = "socks5s://gw.example:1443 socks5h://192.0.2.1:1080"
    hexed = listed.encode().hex()
    dhclient = tmp_path / "dhclient.leases"
    dhclient.write_text('lease {\n  option unknown-230 %s;\n}\n'
                        % ":".join(f"{b:x}" for b in listed.encode()))
    networkd = tmp_path / "3"
    networkd.write_text(f"ADDRESS=192.0.2.77\nOPTION_230={hexed}\n")
    message = bytearray(236) + bytes([99, 130, 83, 99, 53, 1, 5, 230, len(listed)]) \
        + listed.encode() + bytes([255])
    dhcpcd = tmp_path / "eth0.lease"
    dhcpcd.write_bytes(bytes(message))
    for f in (dhclient, networkd, dhcpcd):
        r = run([SOCKSNG, "discover", "--dhcp-code", "230", "--lease-file", f, "--json"])
        assert r.returncode == 0, r.stderr.decode()
        urls = [json.loads(l)["url"] for l in r.stdout.decode().splitlines() if l]
        assert urls == listed.split(), (f, urls)
    # A code outside the site-specific range is a usage error.
    r = run([SOCKSNG, "discover", "--dhcp-code", "12", "--lease-file", dhclient])
    assert r.returncode == 2, r


# The PAC functions browsers provide (Netscape's set, the parts the file uses), then the file,
# then one verdict per URL given on the command line, as JSON.
PAC_HARNESS = r"""
const fs = require("fs");
function ip4(a) { return a.split(".").reduce((n, o) => n * 256 + Number(o), 0); }
function isInNet(host, pattern, mask) {
  if (!/^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/.test(host)) return false;  // no lookups here
  const m = ip4(mask);
  return (ip4(host) & m) >>> 0 === (ip4(pattern) & m) >>> 0;
}
function dnsDomainIs(host, domain) { return host.length >= domain.length && host.endsWith(domain); }
function dnsResolve(host) { throw new Error("the PAC file resolved " + host); }
eval(fs.readFileSync(process.argv[1], "utf8"));
const out = {};
for (const url of process.argv.slice(2)) {
  const host = url.replace(/^[a-z]+:\/\/(\[[^\]]*\]|[^\/:]*).*$/i, "$1");
  out[url] = FindProxyForURL(url, host);
}
console.log(JSON.stringify(out));
"""


def test_pac_and_pvd_over_http(start_proxy, tmp_path):
    (node,) = need("node")
    cfg = proxy_config(extra={
        "ng": {"served": [{"to": ["10.0.0.0/8"], "domains": ["corp.example"]},
                          {"to": ["172.16.0.0/12"], "ports": ["443"]},
                          {"ports": ["8443"]}]},  # draft 4.4: every destination on 8443
        "discovery": {"http": "127.0.0.1:0", "pvd_identifier": "proxy.corp.example"},
    })
    p = start_proxy(cfg, name="announcing")
    line = p.log.wait_for(lambda l: "serving /.well-known/pvd" in l and l, what="the HTTP line")
    base = "http://" + re.search(r"http=(\S+)", line).group(1)

    pac = tmp_path / "proxy.pac"
    r = run(["curl", "-q", "-sS", "--fail", "--max-time", "10", "-o", pac, base + "/proxy.pac"])
    assert r.returncode == 0, r.stderr
    urls = ["http://10.1.2.3/", "http://192.0.2.9/", "http://intranet.corp.example/x",
            "https://172.16.5.5/", "http://172.16.5.5:8080/", "http://example.com/",
            "http://Intranet.Corp.Example./x", "http://evilcorp.example/", "wss://172.16.5.5/",
            "http://example.com:8443/", "https://[2001:db8::1]:8443/"]
    r = run([node, "-e", PAC_HARNESS, pac, *urls])
    assert r.returncode == 0, r.stderr.decode()
    verdicts = json.loads(r.stdout)
    via = f"SOCKS5 {p.hostport}; SOCKS {p.hostport}"
    assert verdicts == {
        "http://10.1.2.3/": via,
        "http://192.0.2.9/": "DIRECT",
        "http://intranet.corp.example/x": via,
        "https://172.16.5.5/": via,           # the range is served on port 443 only
        "http://172.16.5.5:8080/": "DIRECT",
        "http://example.com/": "DIRECT",
        "http://Intranet.Corp.Example./x": via,  # names compare without case or final dot
        "http://evilcorp.example/": "DIRECT",
        "wss://172.16.5.5/": via,               # wss is port 443 too
        "http://example.com:8443/": via,        # the ports-only range
        "https://[2001:db8::1]:8443/": via,
    }, verdicts

    r = run(["curl", "-q", "-sS", "--fail", "--max-time", "10", base + "/.well-known/pvd"])
    assert r.returncode == 0, r.stderr
    pvd = json.loads(r.stdout)
    assert pvd["identifier"] == "proxy.corp.example"
    assert pvd["expires"].endswith("Z") and isinstance(pvd["prefixes"], list)
    assert pvd["proxies"] == [{"protocol": "socks5", "proxy": p.hostport,
                               "identifier": "socksng"}], pvd
    assert {"subnets": ["10.0.0.0/8"], "domains": ["corp.example"], "proxies": ["socksng"]} \
        in pvd["proxy-match"], pvd
    r = run(["curl", "-q", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
             base + "/nothing"])
    assert r.stdout == b"404", r.stdout
    # The client reads the same JSON and asks the proxy it names what it serves.
    r = run([SOCKSNG, "discover", "--pvd", base, "--lease-file", "/dev/null", "--json"])
    assert r.returncode == 0, r.stderr.decode()
    found = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [(f["url"], f["source"]) for f in found] == \
        [(f"socks5h://{p.hostport}", "PvD proxy.corp.example")], found
    served = [p for r in found[0]["ranges"] for p in r["prefixes"]]
    assert "10.0.0.0/8" in served and "172.16.0.0/12" in served, found
    # With --discover --discover-pvd the same proxy enters the route table, as learned.
    r = run([SOCKSNG, "--discover", "--discover-pvd", base, "routes", "--json",
             "--lookup", "10.1.2.3:80", "--lookup", "192.0.2.9:80"],
            env={"SOCKSNG_LEASE_FILES": "/dev/null"})
    assert r.returncode == 0, r.stderr.decode()
    via = {l["target"]: l["via"] for l in json.loads(r.stdout)["lookups"]}
    assert via == {"10.1.2.3:80": f"learned:{p.hostport}", "192.0.2.9:80": "direct"}, via


def test_pvd_over_https_by_pvd_id(start_proxy, tmp_path):
    """RFC 8801 fetches the PvD document over HTTPS from its PvD ID: with [tls], the discovery
    port answers HTTPS too (curl checks it), and `discover --pvd ID` checks the certificate and
    that the document names the ID it was fetched by."""
    pki = Pki(tmp_path)
    ca = pki.ca("pvd-ca")
    leaf = pki.leaf(ca, "pvd", dns=["localhost"], ips=["127.0.0.1"])
    cfg = proxy_config(extra={
        "tls": {"cert": str(leaf.pem), "key": str(leaf.key)},
        "ng": {"served": [{"to": ["10.0.0.0/8"]}]},
        "discovery": {"http": "127.0.0.1:0", "pvd_identifier": "localhost"},
    })
    p = start_proxy(cfg, name="pvd-https")
    line = p.log.wait_for(lambda l: "serving /.well-known/pvd" in l and l, what="the HTTP line")
    port = re.search(r"http=\S+:(\d+)", line).group(1)

    r = run(["curl", "-q", "-sS", "--fail", "--max-time", "10", "--cacert", ca.pem,
             f"https://localhost:{port}/.well-known/pvd"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["identifier"] == "localhost"
    r = run(["curl", "-q", "-sS", "--fail", "--max-time", "10",
             f"http://127.0.0.1:{port}/.well-known/pvd"])
    assert r.returncode == 0 and json.loads(r.stdout)["identifier"] == "localhost", r.stderr

    def discover(pvd, *more):
        return run([SOCKSNG, "discover", "--pvd", pvd, "--lease-file", "/dev/null", "--json",
                    *more])

    r = discover(f"localhost:{port}", "--proxy-cacert", ca.pem)
    assert r.returncode == 0, r.stderr.decode()
    found = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    assert [(f["url"], f["source"]) for f in found] == \
        [(f"socks5h://{p.hostport}", "PvD localhost")], found
    assert "10.0.0.0/8" in [x for r in found[0]["ranges"] for x in r["prefixes"]], found
    # The same by an https:// URL.
    r = discover(f"https://127.0.0.1:{port}/.well-known/pvd", "--proxy-cacert", ca.pem)
    assert r.returncode == 0, r.stderr.decode()
    # A certificate the client does not trust (the system's CAs do not know ours).
    r = discover(f"localhost:{port}")
    assert r.returncode != 0 and b"certificate" in r.stderr.lower(), r.stderr
    # Fetched by a PvD ID the document does not name.
    r = discover(f"127.0.0.1:{port}", "--proxy-cacert", ca.pem)
    assert r.returncode != 0 and b"not the PvD ID" in r.stderr, r.stderr


def spki_pin(cert_pem):
    """curl's pin form (sha256//BASE64 of the SubjectPublicKeyInfo) of a certificate."""
    pub = run(["openssl", "x509", "-in", cert_pem, "-noout", "-pubkey"])
    der = run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub.stdout)
    assert pub.returncode == 0 and der.returncode == 0, (pub.stderr, der.stderr)
    return "sha256//" + base64.b64encode(hashlib.sha256(der.stdout).digest()).decode()


def test_an_announced_pin_is_checked_besides_the_certificate(start_proxy, tmp_path):
    """A lease announcing `socks5s://...?pin=` (draft 10.1): `discover` and `--discover` use
    the proxy only when its key matches the pin and its certificate is valid."""
    pki = Pki(tmp_path)
    ca = pki.ca("pin-ca")
    leaf = pki.leaf(ca, "pinned", dns=["localhost"], ips=["127.0.0.1"])
    other = pki.leaf(ca, "other", dns=["localhost"], ips=["127.0.0.1"])
    p = start_proxy(proxy_config(extra={
        "tls": {"cert": str(leaf.pem), "key": str(leaf.key)},
        "ng": {"served": [{"to": ["10.0.0.0/8"]}]},
    }), name="pinned")
    base = f"socks5s://{p.hostport}"

    def discover(pin, *more):
        lease = tmp_path / "pin.leases"
        lease.write_text('lease {\n  option unknown-224 "%s?pin=%s";\n}\n' % (base, pin))
        r = run([SOCKSNG, "discover", "--lease-file", lease, "--json", *more])
        assert r.returncode == 0, r.stderr.decode()
        (found,) = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
        return found

    good, bad = spki_pin(leaf.pem), spki_pin(other.pem)
    found = discover(good, "--proxy-cacert", ca.pem)
    assert found["protocol"] == "socks-ng", found
    assert "10.0.0.0/8" in [x for r in found["ranges"] for x in r["prefixes"]], found
    found = discover(bad, "--proxy-cacert", ca.pem)
    assert "pin mismatch" in found.get("error", ""), found
    # The pin adds to the certificate check, it does not replace it.
    found = discover(good)
    assert "unknown CA" in found.get("error", ""), found

    # The same proxy, learned with --discover, takes the range it serves.
    lease = tmp_path / "route.leases"
    lease.write_text('lease {\n  option unknown-224 "%s?pin=%s";\n}\n' % (base, good))
    r = run([SOCKSNG, "--discover", "--proxy-cacert", ca.pem, "routes", "--json",
             "--lookup", "10.1.2.3:80"],
            env={"SOCKSNG_LEASE_FILES": str(lease), "XDG_CACHE_HOME": str(tmp_path / "c"),
                 "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert r.returncode == 0, r.stderr.decode()
    via = {l["target"]: l["via"] for l in json.loads(r.stdout)["lookups"]}
    assert via == {"10.1.2.3:80": f"learned:{p.hostport}"}, via


def test_a_hostile_announcement_never_overrides_a_configured_route(start_proxy, tmp_path):
    """A lease announcing a proxy that claims (more specifically) a range the configuration
    routes elsewhere: with --discover the learned proxy takes only what nothing configured
    covers, `discover` reports it, and without --discover it is not used at all."""
    hostile = start_proxy(proxy_config(extra={
        "ng": {"served": [{"to": ["10.99.1.0/24", "198.51.100.0/24"]}]}}), name="hostile")
    office = "127.0.0.1:1"  # configured, never contacted: its ranges are configured
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'[[server]]\nname = "office"\nurl = "socks5h://{office}"\n'
                   'ranges = ["10.99.0.0/16"]\nask = false\n[options]\ncache_dir = ""\n')
    lease = tmp_path / "hostile.leases"
    lease.write_text('lease {\n  option unknown-224 "socks5h://%s";\n}\n' % hostile.hostport)
    env = {"SOCKSNG_LEASE_FILES": str(lease)}
    lookups = ["--lookup", "10.99.1.1:80", "--lookup", "198.51.100.7:80",
               "--lookup", "203.0.113.9:80"]

    r = run([SOCKSNG, "--discover", "-c", cfg, "routes", "--json", *lookups], env=env)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    via = {l["target"]: l["via"] for l in out["lookups"]}
    learned = f"learned:{hostile.hostport}"
    assert via == {"10.99.1.1:80": "office",          # configured, though the /24 is narrower
                   "198.51.100.7:80": learned,        # nothing configured: the learned proxy
                   "203.0.113.9:80": "direct"}, via
    assert {"destination": "10.99.1.0/24", "origin": "learned", "ports": [], "via": learned} \
        in out["routes"], out["routes"]

    r = run([SOCKSNG, "discover", "--lease-file", lease, "--json"])
    assert [json.loads(l)["url"] for l in r.stdout.decode().splitlines()] == \
        [f"socks5h://{hostile.hostport}"], r.stdout

    # Without --discover the lease changes nothing.
    r = run([SOCKSNG, "-c", cfg, "routes", "--json", *lookups], env=env)
    via = {l["target"]: l["via"] for l in json.loads(r.stdout)["lookups"]}
    assert via == {"10.99.1.1:80": "office", "198.51.100.7:80": "direct",
                   "203.0.113.9:80": "direct"}, via


@pytest.fixture(scope="module")
def mdns_link():
    def build(t):
        t.a = t.ns("a")
        t.b = t.ns("b")
        t.br = t.ns("r")
        # Two hosts on one bridged link (a bridge in a namespace of its own).
        sh("ip", "-n", t.br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", t.br, "link", "set", "br0", "up")
        for code, ns, ip in (("a", t.a, "10.77.8.1"), ("b", t.b, "10.77.8.2")):
            end_ns, end_br = f"sm{code}n{t.pid}", f"sm{code}r{t.pid}"
            sh("ip", "link", "add", end_ns, "netns", ns, "type", "veth", "peer", "name",
               end_br, "netns", t.br)
            t.links.append(end_ns)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", end_ns)
            sh("ip", "-n", ns, "link", "set", end_ns, "up", "multicast", "on")
            sh("ip", "-n", t.br, "link", "set", end_br, "master", "br0")
            sh("ip", "-n", t.br, "link", "set", end_br, "up")
        t.etc(t.a, {})
        t.etc(t.b, {})
        t.http_port, _ = t.service(t.a, "found-by-mdns", "127.0.0.1")

    yield from topology("mdn", build)


def test_mdns_announcement_found_across_a_bridge(mdns_link, start_proxy):
    proxy = start_proxy(proxy_config(listen=["10.77.8.1:0"], clients=["10.77.8.0/24"],
                                     extra={"discovery": {"mdns": True,
                                                          "mdns_name": "test proxy"}}),
                        name="mdns-proxy", netns=mdns_link.a)
    proxy.log.wait_for(lambda l: "announcing by mDNS" in l or None, what="the mDNS line")
    r = run([SOCKSNG, "discover", "--mdns", "--mdns-wait", "5", "--lease-file", "/dev/null",
             "--json"], netns=mdns_link.b)
    assert r.returncode == 0, r.stderr.decode()
    found = [json.loads(l) for l in r.stdout.decode().splitlines() if l]
    url = f"socks5h://10.77.8.1:{proxy.port}"
    assert [f["url"] for f in found] == [url], (found, r.stderr)
    assert found[0]["source"].startswith("mDNS test proxy._socksng._tcp.local"), found
    assert found[0]["protocol"] == "socks-ng" and found[0]["ranges"], found
    r = run(["curl", "-q", "-sS", "--max-time", "15", "--socks5-hostname",
             f"10.77.8.1:{proxy.port}", f"http://127.0.0.1:{mdns_link.http_port}/"],
            netns=mdns_link.b)
    assert r.stdout.decode().startswith("found-by-mdns client 127.0.0.1"), r
