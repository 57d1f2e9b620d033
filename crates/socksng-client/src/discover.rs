//! Proxies the network announces (draft section 10), as the host's DHCP client recorded
//! them: the lease files of ISC dhclient (text: `option unknown-224 ...;` for DHCPv4,
//! `option dhcp6.vendor-opts ...;` for DHCPv6), dhcpcd (the whole DHCPv4 or DHCPv6 message)
//! and systemd-networkd (`OPTION_224=hex`); asked by DHCPINFORM; browsed by DNS-SD; read from
//! provisioning domains. The option's bytes are read by socksng-proto's discovery codec. URLs
//! with credentials are dropped: a network cannot be trusted with them (draft section 10.4).

use crate::ClientError;
pub use socksng_proto::wire::discovery::is_site_specific;
use socksng_proto::wire::discovery::{
    decode_dhcpv6_vendor, decode_list, dhcpv4_option, dhcpv6_valid_lifetime, dhcpv6_vendor_list,
};
use std::path::{Path, PathBuf};

/// The DHCP options that carry the proxy list on this network (draft sections 10.2, 10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpOptions {
    /// The DHCPv4 site-specific option code.
    pub code: u8,
    /// The enterprise number of the DHCPv6 Vendor-specific Information option.
    pub enterprise: u32,
}

impl Default for DhcpOptions {
    fn default() -> Self {
        DhcpOptions {
            code: socksng_proto::wire::discovery::DEFAULT_DHCP_CODE,
            enterprise: socksng_proto::wire::discovery::DEFAULT_DHCPV6_ENTERPRISE,
        }
    }
}

/// A proxy the network announced, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The proxy URL.
    pub url: String,
    /// Where it came from: the lease file, or `mDNS <instance>`.
    pub source: String,
}

/// Asks the network's DHCP servers directly: a DHCPINFORM (RFC 2131 section 3.4) broadcast on
/// `interface` (which must have an IPv4 address) for option `code`, the answers read for
/// `wait`. Needs the DHCP client port (68): root, or CAP_NET_BIND_SERVICE.
pub fn inform(
    interface: &str,
    code: u8,
    wait: std::time::Duration,
) -> Result<Vec<Announced>, ClientError> {
    use socksng_proto::wire::discovery::{dhcpinform, is_ack_for};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let what = format!("DHCPINFORM on {interface}");
    let address = interface_ipv4(interface)
        .ok_or_else(|| ClientError::Config(format!("{what}: it has no IPv4 address")))?;
    let xid = u32::from_be_bytes(transaction_id());
    let message = dhcpinform(xid, hardware_address(interface, &what)?, address, code);
    let to = std::net::SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
    let from = std::net::SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
    exchange(&what, interface, from, to, &message, wait, |reply| {
        if !is_ack_for(reply, xid) {
            return None;
        }
        decode_list(&dhcpv4_option(reply, code).ok()??).ok()
    })
}

/// The DHCPv6 counterpart of [`inform`]: an Information-Request (RFC 8415 section 18.2.6)
/// sent to All_DHCP_Relay_Agents_and_Servers on `interface`, asking for the
/// Vendor-specific Information option; the list is read from the Replies of `enterprise`'s.
/// Needs the DHCPv6 client port (546).
pub fn inform6(
    interface: &str,
    enterprise: u32,
    wait: std::time::Duration,
) -> Result<Vec<Announced>, ClientError> {
    use socksng_proto::wire::discovery::{dhcpv6_information_request, is_dhcpv6_reply_for};
    use std::net::{Ipv6Addr, SocketAddrV6};
    let what = format!("DHCPv6 Information-Request on {interface}");
    let name = std::ffi::CString::new(interface)
        .map_err(|_| ClientError::Config(format!("{what}: a bad interface name")))?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(ClientError::Config(format!("{what}: no such interface")));
    }
    let xid = transaction_id();
    let xid = [xid[1], xid[2], xid[3]];
    let message = dhcpv6_information_request(xid, hardware_address(interface, &what)?);
    let servers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
    let to = std::net::SocketAddr::V6(SocketAddrV6::new(servers, 547, 0, index));
    let from = std::net::SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 546, 0, 0));
    exchange(&what, interface, from, to, &message, wait, |reply| {
        if !is_dhcpv6_reply_for(reply, xid) {
            return None;
        }
        dhcpv6_vendor_list(reply, enterprise).ok()?
    })
}

/// A transaction id that differs between runs and processes.
fn transaction_id() -> [u8; 4] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(16)).to_be_bytes()
}

/// An interface's Ethernet address, from sysfs.
fn hardware_address(interface: &str, what: &str) -> Result<[u8; 6], ClientError> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
        .map_err(|e| ClientError::Config(format!("{what}: its hardware address: {e}")))?;
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').take(6).enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    Ok(mac)
}

/// Sends `message` from `from` to `to` on `interface` and reads the answers for `wait`;
/// `read` turns an answer into the URLs it carries (`None` for someone else's answer).
fn exchange(
    what: &str,
    interface: &str,
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
    message: &[u8],
    wait: std::time::Duration,
    read: impl Fn(&[u8]) -> Option<Vec<String>>,
) -> Result<Vec<Announced>, ClientError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let io = |step: &str, e: std::io::Error| ClientError::Config(format!("{what}: {step}: {e}"));
    let socket = Socket::new(Domain::for_address(from), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| io("socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| io("SO_REUSEADDR", e))?;
    if from.is_ipv4() {
        socket
            .set_broadcast(true)
            .map_err(|e| io("SO_BROADCAST", e))?;
    } else {
        socket.set_only_v6(true).map_err(|e| io("IPV6_V6ONLY", e))?;
    }
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(|e| io("SO_BINDTODEVICE", e))?;
    socket
        .bind(&SockAddr::from(from))
        .map_err(|e| io(&format!("binding port {}", from.port()), e))?;
    let socket = std::net::UdpSocket::from(socket);
    socket.send_to(message, to).map_err(|e| io("sending", e))?;
    let deadline = std::time::Instant::now() + wait;
    let mut found: Vec<Announced> = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .map_err(|e| io("timeout", e))?;
        let Ok((n, sender)) = socket.recv_from(&mut buf) else {
            break;
        };
        let Some(urls) = read(&buf[..n]) else {
            continue;
        };
        let server = sender.ip().to_string();
        for url in urls {
            if !carries_credentials(&url) && !found.iter().any(|a| a.url == url) {
                found.push(Announced {
                    url,
                    source: format!("{what} from {server}"),
                });
            }
        }
    }
    Ok(found)
}

/// The first IPv4 address of `interface`.
fn interface_ipv4(interface: &str) -> Option<std::net::Ipv4Addr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .filter(|i| i.name == interface)
        .find_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Some(v4.ip),
            if_addrs::IfAddr::V6(_) => None,
        })
}

/// The proxies a provisioning domain's JSON names (RFC 8801 with the proxy-config draft's
/// `proxies`; draft section 10.6). `url` is a PvD ID (an FQDN: the document is then
/// `https://ID/.well-known/pvd`, as RFC 8801 section 4.1 fetches it), or an `https://` or
/// `http://` URL (the path `/.well-known/pvd` when none is given). Over HTTPS the server's
/// certificate is checked as `tls` says, and a document fetched by PvD ID must name that ID.
/// Only SOCKS5 entries are taken, as `socks5h://`.
pub fn fetch_pvd(
    url: &str,
    tls: &crate::TlsSettings,
    timeout: std::time::Duration,
) -> Result<Vec<Announced>, ClientError> {
    use std::io::{ErrorKind, Read, Write};
    use std::net::ToSocketAddrs;
    let bad = |why: String| ClientError::Config(format!("PvD {url}: {why}"));
    let (secure, rest, by_id) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest, false)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest, false)
    } else if !url.contains("://") && !url.contains('/') {
        (true, url, true)
    } else {
        return Err(bad("expected a PvD ID, https:// or http://".into()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/.well-known/pvd"),
    };
    let (host, port) = split_authority(authority, if secure { 443 } else { 80 })
        .ok_or_else(|| bad(format!("bad host {authority:?}")))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))?;
    // One deadline for the whole exchange: a server trickling bytes cannot hold it longer.
    let deadline = std::time::Instant::now() + timeout;
    let tcp =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| bad(e.to_string()))?;
    // TLS reads and writes the socket many times within one call: each system call is bound.
    let tcp = Deadlined { tcp, deadline };
    let mut stream: Box<dyn ReadWrite> = if secure {
        let config = crate::transport::client_config(tls, b"http/1.1")?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| bad(e.to_string()))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| bad(e.to_string()))?;
        Box::new(rustls::StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/pvd+json\r\n\r\n"
    )
    .map_err(|e| {
        bad(if timed_out(&e) {
            "timed out".into()
        } else {
            e.to_string()
        })
    })?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A server closing without close_notify after a complete HTTP/1.0 answer is
            // common; what arrived is judged by its header and JSON.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !response.is_empty() => break,
            Err(e) if timed_out(&e) => return Err(bad("timed out".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
        if response.len() > PVD_MAX_BYTES {
            return Err(bad(format!("longer than {PVD_MAX_BYTES} bytes")));
        }
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP header".into()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(bad(head.lines().next().unwrap_or("").to_string()));
    }
    pvd_proxies(
        &response[split + 4..],
        by_id.then_some(host.as_str()),
        std::time::SystemTime::now(),
    )
    .map_err(bad)
}

/// A TCP stream each of whose reads and writes waits at most until `deadline`.
struct Deadlined {
    tcp: std::net::TcpStream,
    deadline: std::time::Instant,
}

impl Deadlined {
    fn arm(&self) -> std::io::Result<()> {
        let left = self
            .deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(std::io::ErrorKind::TimedOut)?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl std::io::Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl std::io::Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Both directions of a PvD fetch, plain or TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// `host[:port]` or `[v6][:port]` as a host (brackets removed) and a port.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Some((host.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None if authority.is_empty() => None,
        None => Some((authority.to_string(), default_port)),
    }
}

/// The longest PvD answer read (headers included).
const PVD_MAX_BYTES: usize = 64 * 1024;

/// The most `proxies` entries read from one document (the proxy-config draft asks clients to
/// cap them).
const PVD_MAX_PROXIES: usize = 32;

/// The keys of a `proxies` entry this client understands; an entry whose `mandatory` names
/// any other key is skipped, as the proxy-config draft requires.
const PVD_KNOWN_KEYS: &[&str] = &["protocol", "proxy", "identifier", "alpn", "mandatory"];

/// The SOCKS5 proxies of a PvD JSON document. `expected_id`: the PvD ID it was fetched by,
/// which its `identifier` must equal (RFC 8801 section 4.1); a document past its `expires`
/// is refused.
fn pvd_proxies(
    body: &[u8],
    expected_id: Option<&str>,
    now: std::time::SystemTime,
) -> Result<Vec<Announced>, String> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let identifier = doc["identifier"]
        .as_str()
        .ok_or("no \"identifier\"")?
        .trim_end_matches('.');
    if let Some(id) = expected_id {
        if !identifier.eq_ignore_ascii_case(id.trim_end_matches('.')) {
            return Err(format!("it names {identifier:?}, not the PvD ID {id:?}"));
        }
    }
    let expires = doc["expires"].as_str().ok_or("no \"expires\"")?;
    let expires =
        rfc3339(expires).ok_or_else(|| format!("\"expires\" {expires:?}: not an RFC 3339 time"))?;
    if expires <= now {
        return Err(format!(
            "expired at {}",
            humantime::format_rfc3339_seconds(expires)
        ));
    }
    let mut found: Vec<Announced> = Vec::new();
    let entries = doc["proxies"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for p in entries.iter().take(PVD_MAX_PROXIES) {
        if p["protocol"].as_str() != Some("socks5") {
            continue;
        }
        let unknown_mandatory = p["mandatory"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| !k.as_str().is_some_and(|k| PVD_KNOWN_KEYS.contains(&k)));
        if unknown_mandatory {
            continue;
        }
        let Some(proxy) = p["proxy"].as_str() else {
            continue;
        };
        let url = format!("socks5h://{proxy}");
        if !carries_credentials(&url) && !found.iter().any(|a| a.url == url) {
            found.push(Announced {
                url,
                source: format!("PvD {identifier}"),
            });
        }
    }
    Ok(found)
}

/// The DNS-SD service type socksng servers announce (draft section 10.5).
pub const MDNS_SERVICE: &str = "_socksng._tcp.local.";

/// The most instances one browse takes: any host on the link may announce (draft 10.4).
#[cfg(feature = "mdns")]
const MDNS_MAX_INSTANCES: usize = 32;

/// socksng servers announcing themselves by DNS-SD over mDNS on the links of this host,
/// browsed for `wait`. A server's URL is its TXT `url` (when it holds no credentials), else
/// `socks5h://` (or `socks5s://` with TXT `tls=1`) to its first address and port.
#[cfg(feature = "mdns")]
pub fn browse_mdns(wait: std::time::Duration) -> Result<Vec<Announced>, ClientError> {
    use mdns_sd::{ServiceDaemon, ServiceEvent};
    let daemon = ServiceDaemon::new().map_err(|e| ClientError::Config(format!("mDNS: {e}")))?;
    let events = daemon
        .browse(MDNS_SERVICE)
        .map_err(|e| ClientError::Config(format!("mDNS: {e}")))?;
    let deadline = std::time::Instant::now() + wait;
    let mut found: Vec<Announced> = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        if found.len() == MDNS_MAX_INSTANCES {
            break;
        }
        let Ok(event) = events.recv_timeout(left) else {
            break;
        };
        let ServiceEvent::ServiceResolved(info) = event else {
            continue;
        };
        let url = match info.get_property_val_str("url") {
            // A `url` that is not one clean URL without credentials is ignored (draft 10.5).
            Some(u) if proxy_url(u).is_ok() => u.to_string(),
            _ => {
                let Some(ip) = info.get_addresses_v4().into_iter().next() else {
                    continue;
                };
                let scheme = if info.get_property_val_str("tls") == Some("1") {
                    "socks5s"
                } else {
                    "socks5h"
                };
                format!("{scheme}://{ip}:{}", info.get_port())
            }
        };
        if !found.iter().any(|a| a.url == url) {
            found.push(Announced {
                url,
                source: format!("mDNS {}", info.get_fullname()),
            });
        }
    }
    let _ = daemon.shutdown();
    Ok(found)
}

/// An announced URL as a proxy URL: a `socks5s` URL may carry its server's key pin as
/// `?pin=sha256//BASE64` (draft section 10.1), which is then checked besides the certificate.
/// Refused: a URL with a byte outside printable ASCII or a space (draft 10.1, whichever way
/// it was announced), and one carrying credentials (draft 10.4).
pub fn proxy_url(announced: &str) -> Result<crate::ProxyUrl, ClientError> {
    if announced.is_empty() || !announced.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::Config(format!(
            "{:?}: an announced URL is printable ASCII without spaces",
            crate::url::redact(announced)
        )));
    }
    let url = match announced.split_once("?pin=") {
        Some((base, pin)) => crate::ProxyUrl::parse(base)?.with_tls_options(None, Some(pin), None),
        None => crate::ProxyUrl::parse(announced),
    }?;
    if url.credentials.is_some() {
        return Err(ClientError::Config(format!(
            "{url}: a proxy the network announced may not carry credentials"
        )));
    }
    Ok(url)
}

/// Where DHCP clients keep their leases on Linux.
pub fn default_lease_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, suffix) in [
        ("/var/lib/dhcp", ".leases"),
        ("/var/lib/dhclient", ".leases"),
        ("/var/lib/dhcpcd", ".lease"),
        ("/var/lib/dhcpcd", ".lease6"),
        ("/var/db/dhcpcd", ".lease"),
        ("/var/db/dhcpcd", ".lease6"),
        ("/run/systemd/netif/leases", ""),
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
                .collect();
            files.sort();
            out.extend(files);
        }
    }
    out
}

/// The proxies a DHCP lease file announces (draft 10.2, 10.3), DHCPv4's first, then
/// DHCPv6's; only each interface's current, unexpired lease counts.
pub fn from_lease_file(path: &Path, options: DhcpOptions) -> Result<Vec<Announced>, ClientError> {
    let bytes =
        std::fs::read(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    let written = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let urls = lease_urls(&bytes, options, std::time::SystemTime::now(), written)
        .map_err(|why| ClientError::Config(format!("{}: {why}", path.display())))?;
    let mut found: Vec<Announced> = Vec::new();
    for url in urls {
        if !carries_credentials(&url) && !found.iter().any(|a| a.url == url) {
            found.push(Announced {
                url,
                source: path.display().to_string(),
            });
        }
    }
    Ok(found)
}

/// Whether a URL holds a user (a network must not hand out, or be handed, credentials).
fn carries_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.contains('@')
}

/// The URLs a lease file holds in any of the formats, DHCPv4's first; an expired lease holds
/// none. `now` and `written` (the file's modification time) judge expiry.
fn lease_urls(
    bytes: &[u8],
    options: DhcpOptions,
    now: std::time::SystemTime,
    written: Option<std::time::SystemTime>,
) -> Result<Vec<String>, String> {
    // A lease of `secs` seconds written at `written` (0xffffffff: infinite, RFC 2132 9.2
    // and RFC 8415 7.7); an end past what the clock can hold never comes.
    let ended = |secs: Option<u32>| match (secs, written) {
        (Some(secs), Some(written)) if secs != u32::MAX => written
            .checked_add(std::time::Duration::from_secs(secs.into()))
            .is_some_and(|end| end < now),
        _ => false,
    };
    // dhcpcd, DHCPv4: the whole message, written when the lease was taken.
    if bytes.get(236..240) == Some(&[99, 130, 83, 99][..]) {
        let lease_secs = dhcpv4_option(bytes, 51)
            .ok()
            .flatten()
            .and_then(|t| <[u8; 4]>::try_from(t.as_slice()).ok())
            .map(u32::from_be_bytes);
        if ended(lease_secs) {
            return Ok(Vec::new());
        }
        return match dhcpv4_option(bytes, options.code).map_err(|e| e.to_string())? {
            Some(data) => decode_list(&data).map_err(|e| format!("option {}: {e}", options.code)),
            None => Ok(Vec::new()),
        };
    }
    // dhcpcd, DHCPv6: the whole Reply (message type 7).
    if bytes.first() == Some(&7) {
        if ended(dhcpv6_valid_lifetime(bytes)) {
            return Ok(Vec::new());
        }
        return Ok(dhcpv6_vendor_list(bytes, options.enterprise)
            .map_err(|e| format!("DHCPv6 vendor option: {e}"))?
            .unwrap_or_default());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither a DHCP message nor text")?;
    // systemd-networkd: KEY=VALUE lines, private options as OPTION_<code>=<hex>; the file
    // goes when the lease does.
    let key = format!("OPTION_{}=", options.code);
    if let Some(hex) = text.lines().rev().find_map(|l| l.trim().strip_prefix(&key)) {
        let data = parse_hex(hex, "")?;
        return decode_list(&data).map_err(|e| format!("option {}: {e}", options.code));
    }
    dhclient_urls(text, options, now)
}

/// One `lease {}` or `lease6 {}` block of a dhclient lease file.
#[derive(Default)]
struct LeaseBlock {
    v6: bool,
    interface: String,
    data: Option<Result<Vec<u8>, String>>,
    /// When it ends: `expire` (DHCPv4), or the latest `starts` + `max-life` of its
    /// addresses and prefixes (DHCPv6); `None` when it does not say.
    until: Option<std::time::SystemTime>,
    /// DHCPv6: the `starts` of the identity association being read.
    ia_starts: Option<u64>,
}

/// The `{` and `}` of a dhclient lease line that are structure: outside quoted strings
/// (which keep what the network sent, braces included) and before a comment.
fn braces(line: &str) -> (usize, usize) {
    let (mut open, mut close, mut quoted, mut escaped) = (0, 0, false, false);
    for c in line.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, false, _) => {}
            (false, _, '"') => quoted = true,
            (false, _, '#') => break,
            (false, _, '{') => open += 1,
            (false, _, '}') => close += 1,
            (false, _, _) => {}
        }
    }
    (open, close)
}

/// ISC dhclient's lease file: blocks appended as leases come, so the last block of an
/// interface (per family) is its current lease; an earlier network's option is not used
/// once a newer lease lacks it, nor is an expired lease's. DHCPv4 carries the list as
/// `option unknown-224 "text";` (or colon-separated hex), DHCPv6 as
/// `option dhcp6.vendor-opts HEX;`. A block that cannot be read (or is cut off, as while
/// dhclient appends it) announces nothing, and hides its interface's older blocks.
fn dhclient_urls(
    text: &str,
    options: DhcpOptions,
    now: std::time::SystemTime,
) -> Result<Vec<String>, String> {
    let v4_name = format!("unknown-{}", options.code);
    let mut blocks: Vec<LeaseBlock> = Vec::new();
    let mut current: Option<LeaseBlock> = None;
    let mut depth = 0usize;
    for line in text.lines() {
        let line = line.trim();
        let (open, close) = braces(line);
        let Some(block) = current.as_mut() else {
            if line.starts_with("lease {") || line.starts_with("lease6 {") {
                current = Some(LeaseBlock {
                    v6: line.starts_with("lease6"),
                    ..LeaseBlock::default()
                });
                depth = open.saturating_sub(close);
            }
            continue;
        };
        let field = |name: &str| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|rest| rest.trim().trim_end_matches(';').trim())
        };
        match depth {
            1 => {
                if let Some(name) = field("interface") {
                    block.interface = name.trim_matches('"').into();
                } else if let Some(when) = field("expire") {
                    block.until = dhclient_time(when);
                } else if let Some(rest) = field("option") {
                    if let Some((name, value)) = rest.split_once(char::is_whitespace) {
                        let ours = if block.v6 {
                            name == "dhcp6.vendor-opts"
                        } else {
                            name == v4_name || name == "socksng-proxies"
                        };
                        if ours {
                            let value = value.trim();
                            block.data = Some(
                                match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                                    Some(quoted) => Ok(unescape(quoted)),
                                    None => parse_hex(value, ":"),
                                },
                            );
                        }
                    }
                }
            }
            // DHCPv6: `starts` of an ia-na / ia-pd, `max-life` of its addresses or prefixes.
            2 if block.v6 => {
                if let Some(secs) = field("starts") {
                    block.ia_starts = secs.parse().ok();
                }
            }
            3 if block.v6 => {
                let end = field("max-life")
                    .and_then(|secs| secs.parse::<u64>().ok())
                    .zip(block.ia_starts)
                    .and_then(|(life, starts)| starts.checked_add(life))
                    .and_then(|end| {
                        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(end))
                    });
                if end.is_some() {
                    block.until = block.until.max(end);
                }
            }
            _ => {}
        }
        depth = (depth + open).saturating_sub(close);
        if depth == 0 {
            blocks.extend(current.take());
        }
    }
    if let Some(mut cut_off) = current.take() {
        cut_off.data = None;
        blocks.push(cut_off);
    }
    let mut urls: Vec<String> = Vec::new();
    let mut failed: Option<String> = None;
    for v6 in [false, true] {
        let mut seen: Vec<&str> = Vec::new();
        // Newest first: the last block of each interface decides.
        for block in blocks.iter().rev().filter(|b| b.v6 == v6) {
            if seen.contains(&block.interface.as_str()) {
                continue;
            }
            seen.push(&block.interface);
            if block.until.is_some_and(|t| t < now) {
                continue;
            }
            let list = match &block.data {
                None => continue,
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(data)) if v6 => decode_dhcpv6_vendor(data, options.enterprise)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| format!("DHCPv6 vendor option: {e}")),
                Some(Ok(data)) => {
                    decode_list(data).map_err(|e| format!("option {}: {e}", options.code))
                }
            };
            match list {
                Ok(list) => {
                    for url in list {
                        if !urls.contains(&url) {
                            urls.push(url);
                        }
                    }
                }
                // One interface's bad lease does not hide another's good one.
                Err(e) => {
                    failed.get_or_insert(format!("interface {:?}: {e}", block.interface));
                }
            }
        }
    }
    match failed {
        Some(e) if urls.is_empty() => Err(e),
        _ => Ok(urls),
    }
}

/// An RFC 3339 time, in UTC (`Z`) or with a numeric offset (`+02:00`), which humantime
/// alone does not take; `t` and `z` may be lower case (RFC 3339 section 5.6).
fn rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let text = text.trim().to_ascii_uppercase();
    if text.ends_with('Z') {
        return humantime::parse_rfc3339_weak(&text).ok();
    }
    let at = text.len().checked_sub(6)?;
    let (base, offset) = (text.get(..at)?, text.get(at..)?.as_bytes());
    let sign = match offset[0] {
        b'+' => 1i64,
        b'-' => -1,
        _ => return None,
    };
    let digits = |a: u8, b: u8| -> Option<i64> {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
    };
    let (hours, minutes) = (digits(offset[1], offset[2])?, digits(offset[4], offset[5])?);
    if offset[3] != b':' || hours > 23 || minutes > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(&format!("{base}Z")).ok()?;
    let shift = std::time::Duration::from_secs(((hours * 60 + minutes) * 60).unsigned_abs());
    // Local time minus its offset is UTC.
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// A dhclient lease time: `W YYYY/MM/DD HH:MM:SS` (UTC), `epoch N` or `never` (none).
fn dhclient_time(text: &str) -> Option<std::time::SystemTime> {
    let text = text
        .split('#')
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches(';')
        .trim();
    if let Some(secs) = text.strip_prefix("epoch ") {
        let secs = secs.trim().parse().ok()?;
        return std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs));
    }
    let (_, date_time) = text.split_once(' ')?;
    let (date, time) = date_time.trim().split_once(' ')?;
    humantime::parse_rfc3339(&format!("{}T{}Z", date.replace('/', "-"), time.trim())).ok()
}

fn parse_hex(text: &str, sep: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("bad hex {text:?}");
    let digits: String = if sep.is_empty() {
        text.trim().to_string()
    } else {
        text.split(sep)
            .map(|p| format!("{:0>2}", p.trim()))
            .collect()
    };
    if digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// dhclient's quoting: backslash escapes and octal `\NNN` (at most `\377`; a larger one is
/// taken as the characters it is).
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            let octal = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
                .map(|d| d.iter().fold(0u16, |n, c| n * 8 + u16::from(c - b'0')))
                .and_then(|n| u8::try_from(n).ok());
            if let Some(byte) = octal {
                out.push(byte);
                i += 4;
            } else {
                out.push(bytes[i + 1]);
                i += 2;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use socksng_proto::wire::discovery::encode_dhcpv4;

    const LIST: &str = "socks5s://gw.example:1443 socks5h://192.0.2.1:1080";

    fn pvd(extra: &str) -> String {
        format!(
            r#"{{"identifier":"proxy.example.","expires":"2030-01-01T00:00:00Z","prefixes":[],{extra}}}"#
        )
    }

    #[test]
    fn pvd_documents_give_their_socks5_proxies_only() {
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let doc = pvd(r#""proxies":[
                {"protocol":"http","proxy":"h.example:8080"},
                {"protocol":"socks5","proxy":"s.example:1080","identifier":"a"},
                {"protocol":"socks5","proxy":"s.example:1080"},
                {"protocol":"socks5","proxy":"u:p@cred.example:1080"},
                {"protocol":"socks5","proxy":"m.example:1080","mandatory":["socksng_udp"]},
                {"protocol":"socks5","proxy":"k.example:1080","mandatory":["alpn"]},
                {"protocol":"socks5"}]"#);
        let found = pvd_proxies(doc.as_bytes(), Some("Proxy.Example"), now).unwrap();
        let urls: Vec<&str> = found.iter().map(|a| a.url.as_str()).collect();
        assert_eq!(
            urls,
            ["socks5h://s.example:1080", "socks5h://k.example:1080"]
        );
        assert_eq!(found[0].source, "PvD proxy.example");
        // Fetched by another PvD ID: refused, as RFC 8801 section 4.1 requires.
        let e = pvd_proxies(doc.as_bytes(), Some("other.example"), now).unwrap_err();
        assert!(e.contains("not the PvD ID"), "{e}");
        // Past its expiry: refused.
        let later = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
        assert!(pvd_proxies(doc.as_bytes(), None, later)
            .unwrap_err()
            .contains("expired"));
        // Missing required keys, or not JSON.
        assert!(pvd_proxies(br#"{"expires":"2030-01-01T00:00:00Z"}"#, None, now).is_err());
        assert!(pvd_proxies(br#"{"identifier":"x"}"#, None, now).is_err());
        assert!(pvd_proxies(b"\xff{", None, now).is_err());
    }

    #[test]
    fn a_trickling_or_endless_pvd_server_is_given_up_on() {
        use std::io::Write;
        enum Server {
            Trickle,
            Endless,
            /// A TLS record header announcing 16 KiB, then one byte at a time: rustls reads
            /// many times within one call, each bound by the same deadline.
            TlsTrickle,
        }
        let serve = |how: Server| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let tls = matches!(how, Server::TlsTrickle);
            let scheme = if tls { "https" } else { "http" };
            let url = format!("{scheme}://{}/", l.local_addr().unwrap());
            let server = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let head: &[u8] = match how {
                    Server::TlsTrickle => &[0x16, 0x03, 0x03, 0x40, 0x00],
                    _ => b"HTTP/1.0 200 OK\r\n\r\n",
                };
                let _ = s.write_all(head);
                if matches!(how, Server::Endless) {
                    let _ = s.write_all(&[b' '; 1 << 20]);
                    return;
                }
                // Bounded: at most 50 bytes, 100 ms apart.
                for _ in 0..50 {
                    if s.write_all(b" ").is_err() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
            let e = fetch_pvd(
                &url,
                &crate::TlsSettings::default(),
                std::time::Duration::from_millis(500),
            )
            .unwrap_err();
            server.join().unwrap();
            e.to_string()
        };
        let slow = serve(Server::Trickle);
        assert!(slow.contains("timed out"), "{slow}");
        let long = serve(Server::Endless);
        assert!(long.contains("longer than 65536 bytes"), "{long}");
        let slow_tls = serve(Server::TlsTrickle);
        assert!(slow_tls.contains("timed out"), "{slow_tls}");
    }

    #[test]
    fn expiry_times_with_offsets() {
        let utc = rfc3339("2030-01-01T10:00:00Z").unwrap();
        assert_eq!(rfc3339("2030-01-01T12:00:00+02:00"), Some(utc));
        assert_eq!(rfc3339("2030-01-01T04:30:00-05:30"), Some(utc));
        assert_eq!(rfc3339("2030-01-01t10:00:00z"), Some(utc));
        assert_eq!(
            rfc3339("2030-01-01T10:00:00.5Z").map(|t| t > utc),
            Some(true)
        );
        for bad in [
            "2030-01-01T10:00:00",
            "2030-01-01T10:00:00+2:00",
            "x",
            "",
            "+00:00",
            "2030-01-01T10:00:00+24:00",
            "2030-01-01T10:00:00\u{e9}0:00",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn pvd_documents_are_capped() {
        let now = std::time::UNIX_EPOCH;
        let entries: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"protocol":"socks5","proxy":"p{i}.example:1080"}}"#))
            .collect();
        let doc = pvd(&format!(r#""proxies":[{}]"#, entries.join(",")));
        assert_eq!(
            pvd_proxies(doc.as_bytes(), None, now).unwrap().len(),
            PVD_MAX_PROXIES
        );
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        let s = |a| split_authority(a, 443);
        assert_eq!(s("pvd.example"), Some(("pvd.example".into(), 443)));
        assert_eq!(s("pvd.example:8443"), Some(("pvd.example".into(), 8443)));
        assert_eq!(s("[2001:db8::1]"), Some(("2001:db8::1".into(), 443)));
        assert_eq!(s("[2001:db8::1]:80"), Some(("2001:db8::1".into(), 80)));
        assert_eq!(s("2001:db8::1"), None);
        assert_eq!(s("pvd.example:x"), None);
        assert_eq!(s("[::1]x"), None);
        assert_eq!(s(""), None);
    }

    fn urls(bytes: &[u8], code: u8) -> Vec<String> {
        let options = DhcpOptions {
            code,
            ..DhcpOptions::default()
        };
        lease_urls(bytes, options, std::time::SystemTime::now(), None).unwrap()
    }

    /// The lease dhclient -6 wrote for a dnsmasq announcing `socksng-proxies` under enterprise
    /// 32473 (`socksngd announce --dhcp`'s line), as it wrote it.
    const DHCLIENT6: &str = "default-duid \"\\000\\001\\000\\0012\\237\";\nlease6 {\n  interface \"v6b\";\n  ia-na e4:97:1b:39 {\n    starts 1796003718;\n    iaaddr fd00:77::1f4 {\n      max-life 3600;\n    }\n  }\n  option dhcp6.vendor-opts 0:0:7e:d9:0:1:0:18:73:6f:63:6b:73:35:68:3a:2f:2f:31:30:2e:37:37:2e:36:2e:31:3a:31:30:38:30;\n  option dhcp6.status-code success \"success\";\n  option vsio.unknown-32473 0:1:0:18:73:6f:63:6b:73:35:68:3a:2f:2f:31:30:2e:37:37:2e:36:2e:31:3a:31:30:38:30;\n}\n";

    #[test]
    fn dhcpv6_leases_of_dhclient_and_dhcpcd() {
        // A minute after the lease started (it lasts an hour).
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_003_778);
        assert_eq!(
            lease_urls(DHCLIENT6.as_bytes(), DhcpOptions::default(), now, None).unwrap(),
            ["socks5h://10.77.6.1:1080"]
        );
        let other = DhcpOptions {
            enterprise: 1,
            ..DhcpOptions::default()
        };
        assert!(lease_urls(DHCLIENT6.as_bytes(), other, now, None)
            .unwrap()
            .is_empty());
        // dhcpcd keeps the Reply itself.
        let mut reply = vec![7, 1, 2, 3, 0, 2, 0, 1, 0xee];
        reply.extend(
            socksng_proto::wire::discovery::encode_dhcpv6(32473, "socks5h://[2001:db8::1]:1080")
                .unwrap(),
        );
        assert_eq!(urls(&reply, 224), ["socks5h://[2001:db8::1]:1080"]);
        assert!(lease_urls(&reply[..reply.len() - 3], DhcpOptions::default(), now, None).is_err());
        // With an address valid for an hour (IA_NA, IAADDR): over once that hour has passed
        // since dhcpcd wrote the file.
        let mut iaaddr = vec![0, 5, 0, 24];
        iaaddr.extend_from_slice(&[0u8; 16]);
        iaaddr.extend_from_slice(&[0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10]);
        let mut ia_na = vec![0, 3, 0, 12 + 28];
        ia_na.extend_from_slice(&[0u8; 12]);
        ia_na.extend(iaaddr);
        reply.extend(ia_na);
        let written = |ago| Some(now - std::time::Duration::from_secs(ago));
        let o = DhcpOptions::default();
        assert_eq!(lease_urls(&reply, o, now, written(60)).unwrap().len(), 1);
        assert!(lease_urls(&reply, o, now, written(7200))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn only_the_current_unexpired_lease_of_each_interface_counts() {
        let now = humantime::parse_rfc3339("2026-11-30T12:00:00Z").unwrap();
        let at =
            |text: &str| lease_urls(text.as_bytes(), DhcpOptions::default(), now, None).unwrap();
        let office = "lease {\n  interface \"wlan0\";\n  option unknown-224 \"socks5h://office:1080\";\n  expire 3 2026/12/02 00:00:00;\n}\n";
        let cafe = "lease {\n  interface \"wlan0\";\n  expire 3 2026/12/02 00:00:00;\n}\n";
        let wired = "lease {\n  interface \"eth0\";\n  option unknown-224 \"socks5h://wired:1080\";\n  expire epoch 1796169600; # Wed Dec 2 2026\n}\n";
        assert_eq!(at(office), ["socks5h://office:1080"]);
        // A newer lease on the same interface without the option: the office proxy is gone.
        assert!(at(&format!("{office}{cafe}")).is_empty());
        // Another interface's lease stays.
        assert_eq!(
            at(&format!("{office}{wired}{cafe}")),
            ["socks5h://wired:1080"]
        );
        // Expired, by date or by epoch.
        let old = office.replace("2026/12/02", "2026/11/29");
        assert!(at(&old).is_empty());
        assert!(at(&wired.replace("1796169600", "1795000000")).is_empty());
        assert_eq!(
            at(&office.replace("expire 3 2026/12/02 00:00:00", "expire never")).len(),
            1
        );
        // dhcpcd's message: expired when its lease time has passed since it was written.
        let mut message = vec![0u8; 236];
        message.extend_from_slice(&[99, 130, 83, 99, 53, 1, 5, 51, 4, 0, 0, 0x0e, 0x10]);
        message.extend(encode_dhcpv4(224, "socks5h://gw:1080"));
        message.push(255);
        let written = |secs_ago| Some(now - std::time::Duration::from_secs(secs_ago));
        let o = DhcpOptions::default();
        assert_eq!(lease_urls(&message, o, now, written(60)).unwrap().len(), 1);
        assert!(lease_urls(&message, o, now, written(7200))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn braces_in_values_cut_off_blocks_and_bad_interfaces() {
        let now = humantime::parse_rfc3339("2026-11-30T12:00:00Z").unwrap();
        let at = |text: &str| lease_urls(text.as_bytes(), DhcpOptions::default(), now, None);
        let office = "lease {\n  interface \"wlan0\";\n  option unknown-224 \"socks5h://office:1080\";\n  expire 3 2026/12/02 00:00:00;\n}\n";
        // A network's text with braces and a '#' in it is a value, not structure.
        let braces = "lease {\n  interface \"wlan0\";\n  option domain-name \"a{b\\\"}#c\";\n  expire 3 2026/11/29 00:00:00;\n}\n";
        assert!(
            at(&format!("{office}{braces}")).unwrap().is_empty(),
            "expired, newest"
        );
        let open_brace = "lease {\n  interface \"wlan0\";\n  option unknown-225 \"{\";\n}\n";
        assert!(at(&format!("{office}{open_brace}")).unwrap().is_empty());
        // A block cut off (dhclient appending) hides its interface's older ones.
        let cut = "lease {\n  interface \"wlan0\";\n  option unknown-224 \"socks5h://new:1\";\n";
        assert!(at(&format!("{office}{cut}")).unwrap().is_empty());
        // One interface's bad option does not hide another's good one; alone, it is an error.
        let bad = "lease {\n  interface \"eth1\";\n  option unknown-224 1:2:3;\n}\n";
        assert_eq!(
            at(&format!("{office}{bad}")).unwrap(),
            ["socks5h://office:1080"]
        );
        assert!(at(bad).unwrap_err().contains("eth1"));
        // An expiry past what the clock can hold never comes, and never panics.
        let far = office.replace(
            "expire 3 2026/12/02 00:00:00",
            "expire epoch 18446744073709551615",
        );
        assert_eq!(at(&far).unwrap().len(), 1);
        // DHCPv6: starts + max-life of the addresses.
        let v6 = |starts: u64| DHCLIENT6.replace("starts 1796003718", &format!("starts {starts}"));
        let now_secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(at(&v6(now_secs - 60)).unwrap().len(), 1);
        assert!(at(&v6(now_secs - 7200)).unwrap().is_empty());
    }

    #[test]
    fn malformed_lease_text_is_an_error_not_a_panic() {
        for bad in [
            "OPTION_224=a\u{e9}b\n",
            "lease {\n option unknown-224 a\u{e9}b;\n}\n",
        ] {
            assert!(lease_urls(
                bad.as_bytes(),
                DhcpOptions::default(),
                std::time::UNIX_EPOCH,
                None
            )
            .is_err());
        }
        assert_eq!(unescape("\\777\\101"), b"777A");
        assert_eq!(unescape("\\377"), [255]);
    }

    #[test]
    fn dhclient_leases_in_text_and_hex_the_newest_wins() {
        let hex: Vec<String> = LIST.bytes().map(|b| format!("{b:x}")).collect();
        let leases = format!(
            "lease {{\n  interface \"eth0\";\n  option unknown-224 \"socks5h://198.51.100.1:1080\";\n}}\n\
             lease {{\n  interface \"eth0\";\n  option unknown-224 {};\n  renew 4 2026/11/30 01:00:00;\n}}\n",
            hex.join(":")
        );
        assert_eq!(
            urls(leases.as_bytes(), 224),
            ["socks5s://gw.example:1443", "socks5h://192.0.2.1:1080"]
        );
        let quoted = "lease {\n  option unknown-230 \"socks5h://10.0.0.1:1080\\040socks5h://10.0.0.2:1080\";\n}\n";
        assert_eq!(
            urls(quoted.as_bytes(), 230),
            ["socks5h://10.0.0.1:1080", "socks5h://10.0.0.2:1080"]
        );
        assert!(urls(quoted.as_bytes(), 224).is_empty());
    }

    #[test]
    fn networkd_and_dhcpcd_leases() {
        let hex: String = LIST.bytes().map(|b| format!("{b:02x}")).collect();
        let networkd = format!("ADDRESS=192.0.2.77\nOPTION_224={hex}\n");
        assert_eq!(urls(networkd.as_bytes(), 224).len(), 2);
        let mut message = vec![0u8; 236];
        message.extend_from_slice(&[99, 130, 83, 99, 53, 1, 5]);
        message.extend(encode_dhcpv4(224, LIST));
        message.push(255);
        assert_eq!(
            urls(&message, 224),
            ["socks5s://gw.example:1443", "socks5h://192.0.2.1:1080"]
        );
    }

    #[test]
    fn an_announced_pin_is_kept() {
        let pin = "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let url = proxy_url(&format!("socks5s://gw.example:1443?pin={pin}")).unwrap();
        let tls = url.tls.expect("socks5s");
        assert_eq!(tls.pin_sha256.unwrap()[1], 1);
        assert!(proxy_url(&format!("socks5h://gw:1080?pin={pin}")).is_err());
        assert!(proxy_url("socks5s://gw:1443?pin=md5//x").is_err());
        assert!(proxy_url("socks5h://gw:1080").unwrap().tls.is_none());
        // Whatever the source (an mDNS TXT, a PvD document), one URL is one URL.
        assert!(proxy_url("socks5h://x socks5h://u:p@evil:1").is_err());
        assert!(proxy_url("socks5h://u:p@evil:1").is_err());
        assert!(proxy_url("socks5h://gw\u{e9}:1").is_err());
        assert!(proxy_url("").is_err());
    }

    #[test]
    fn credentials_from_the_network_are_dropped() {
        assert!(carries_credentials("socks5h://user:pw@gw:1080"));
        assert!(!carries_credentials("socks5h://gw:1080"));
        let dir = std::env::temp_dir().join(format!("socksng-lease-{}", std::process::id()));
        std::fs::write(
            &dir,
            "lease {\n option unknown-224 \"socks5h://a:b@gw:1080 socks5h://gw:1081\";\n}\n",
        )
        .unwrap();
        let found = from_lease_file(&dir, DhcpOptions::default()).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            found.iter().map(|a| a.url.as_str()).collect::<Vec<_>>(),
            ["socks5h://gw:1081"]
        );
    }
}
