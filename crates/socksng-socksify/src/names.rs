//! Placeholder addresses for names the proxy resolves (proxychains-ng's proxy_dns, per
//! process): a name routed through a proxy gets an address from 198.18.0.0/15 (the
//! benchmarking range, never routed on the Internet) or fd53:6f63:6b73:6e67::/64, and
//! `connect` to that address becomes a request for the name. The same name keeps its address
//! for the life of the process; a fork inherits the table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

/// 198.18.0.0/15.
const V4_BASE: u32 = 0xC612_0000;
const V4_SIZE: u32 = 1 << 17;
/// fd53:6f63:6b73:6e67::/64 ("Socksng" in the interface identifier's prefix).
const V6_PREFIX: u128 = 0xfd53_6f63_6b73_6e67 << 64;

#[derive(Default)]
struct Table {
    /// Index - 1 → name.
    names: Vec<String>,
    by_name: HashMap<String, u32>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn with_table<T>(f: impl FnOnce(&mut Table) -> T) -> T {
    let mut guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Table::default))
}

/// The placeholder index of `name` (made on first use); `None` when the range is used up.
fn index_of(name: &str) -> Option<u32> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    with_table(|t| {
        if let Some(&i) = t.by_name.get(&name) {
            return Some(i);
        }
        // Index 0 would be the network address; the last one its broadcast.
        let i = u32::try_from(t.names.len()).ok()? + 1;
        if i >= V4_SIZE - 1 {
            return None;
        }
        t.names.push(name.clone());
        t.by_name.insert(name, i);
        Some(i)
    })
}

/// The IPv4 placeholder of `name`.
pub fn v4_for(name: &str) -> Option<Ipv4Addr> {
    index_of(name).map(|i| Ipv4Addr::from(V4_BASE + i))
}

/// The IPv6 placeholder of `name`.
pub fn v6_for(name: &str) -> Option<Ipv6Addr> {
    index_of(name).map(|i| Ipv6Addr::from(V6_PREFIX | u128::from(i)))
}

/// The name behind a placeholder address, if it is one this process handed out.
pub fn name_of(ip: IpAddr) -> Option<String> {
    let index = match ip.to_canonical() {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_sub(V4_BASE)
            .filter(|i| *i < V4_SIZE)?,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if bits & !0xffff_ffff_ffff_ffffu128 != V6_PREFIX {
                return None;
            }
            u32::try_from(bits & 0xffff_ffff_ffff_ffff).ok()?
        }
    };
    let slot = usize::try_from(index.checked_sub(1)?).ok()?;
    with_table(|t| t.names.get(slot).cloned())
}

/// Whether `ip` lies in a placeholder range (handed out or not).
pub fn is_placeholder(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u32::from(v4).wrapping_sub(V4_BASE) < V4_SIZE,
        IpAddr::V6(v6) => u128::from(v6) & !0xffff_ffff_ffff_ffffu128 == V6_PREFIX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_addresses_in_both_families() {
        let a = v4_for("Intranet.Example.").unwrap();
        assert_eq!(v4_for("intranet.example"), Some(a));
        let b = v4_for("other.example").unwrap();
        assert_ne!(a, b);
        assert!(Ipv4Addr::new(198, 18, 0, 0) < a && a < Ipv4Addr::new(198, 20, 0, 0));
        assert_eq!(name_of(a.into()).as_deref(), Some("intranet.example"));
        let six = v6_for("intranet.example").unwrap();
        assert_eq!(name_of(six.into()).as_deref(), Some("intranet.example"));
        assert_eq!(
            name_of(IpAddr::V6(a.to_ipv6_mapped())).as_deref(),
            Some("intranet.example")
        );
        assert!(is_placeholder(b.into()));
        assert!(!is_placeholder("198.20.0.1".parse().unwrap()));
        assert_eq!(name_of("198.19.255.254".parse().unwrap()), None);
        assert_eq!(name_of("10.0.0.1".parse().unwrap()), None);
    }
}
