//! The discovery option of draft section 10: the proxies a network announces through DHCP,
//! as an ordered list of proxy URLs. DHCPv4 carries it in a site-specific option (a code from
//! 224 to 254 that the network chooses, 224 by default), as NVT ASCII text: the URLs in order
//! of preference, separated by one space. An option longer than 255 bytes is split into
//! several instances of the same code, concatenated in order by the receiver (RFC 3396). A
//! trailing NUL is stripped (RFC 2132 section 2). DHCPv6 carries the same text in the
//! Vendor-specific Information option (17) under an enterprise number the network chooses,
//! as sub-option 1.
//!
//! Also here: the options of a DHCPv4 or DHCPv6 message (for lease files that keep the whole
//! message, and DHCPINFORM answers).

use super::DecodeError;

/// The DHCPv4 option code used when the network says nothing else.
pub const DEFAULT_DHCP_CODE: u8 = 224;
/// The sub-option of the DHCPv6 Vendor-specific Information option that carries the list.
pub const DHCPV6_SUBOPTION: u16 = 1;
/// The DHCPv6 Vendor-specific Information option (RFC 8415 section 21.17).
pub const OPTION_VENDOR_OPTS: u16 = 17;
/// The DHCPv6 enterprise number used when the network says nothing else: the one RFC 5612
/// reserves for documentation, which a site replaces with its own.
pub const DEFAULT_DHCPV6_ENTERPRISE: u32 = 32473;

/// Whether `code` is one of the site-specific DHCPv4 codes (RFC 3942 section 3.2).
pub fn is_site_specific(code: u8) -> bool {
    (224..=254).contains(&code)
}

/// The option text for `urls`: in order, separated by one space. Fails when a URL is empty,
/// holds a space or a byte outside printable ASCII.
pub fn encode_list(urls: &[&str]) -> Result<String, DecodeError> {
    for url in urls {
        if url.is_empty() || !url.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(DecodeError::Invalid(
                "a proxy URL must be printable ASCII without spaces",
            ));
        }
    }
    Ok(urls.join(" "))
}

/// The URLs of an option's text, in order. A trailing NUL is stripped; empty entries (two
/// spaces) are skipped; text that is not printable ASCII is refused.
pub fn decode_list(data: &[u8]) -> Result<Vec<String>, DecodeError> {
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    if !data
        .iter()
        .all(|&b| b == b' ' || (0x21..=0x7e).contains(&b))
    {
        return Err(DecodeError::Invalid(
            "the proxy list is not printable ASCII",
        ));
    }
    Ok(data
        .split(|&b| b == b' ')
        .filter(|u| !u.is_empty())
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .collect())
}

/// The DHCPv4 option instances (code, length, data) that carry `text`: as many as its length
/// needs, 255 bytes each at most.
pub fn encode_dhcpv4(code: u8, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2 * (text.len() / 255 + 1));
    for chunk in text.as_bytes().chunks(255) {
        out.push(code);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// The DHCPv6 Vendor-specific Information option carrying `text` under `enterprise`:
/// `OPTION(2) LEN(2) ENTERPRISE(4) SUBOPT(2) SUBLEN(2) text`. Fails for text too long for a
/// DHCPv6 option.
pub fn encode_dhcpv6(enterprise: u32, text: &str) -> Result<Vec<u8>, DecodeError> {
    let sub_len = u16::try_from(text.len())
        .ok()
        .filter(|l| usize::from(*l) + 8 <= usize::from(u16::MAX))
        .ok_or(DecodeError::Invalid(
            "proxy list too long for a DHCPv6 option",
        ))?;
    let mut out = Vec::with_capacity(text.len() + 12);
    out.extend_from_slice(&OPTION_VENDOR_OPTS.to_be_bytes());
    out.extend_from_slice(&(sub_len + 8).to_be_bytes());
    out.extend_from_slice(&enterprise.to_be_bytes());
    out.extend_from_slice(&DHCPV6_SUBOPTION.to_be_bytes());
    out.extend_from_slice(&sub_len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// The proxy list in the data of a DHCPv6 Vendor-specific Information option (without its
/// own code and length), if it is `enterprise`'s and holds the sub-option.
pub fn decode_dhcpv6_vendor(
    data: &[u8],
    enterprise: u32,
) -> Result<Option<Vec<String>>, DecodeError> {
    let Some((en, rest)) = data.split_first_chunk::<4>() else {
        return Err(DecodeError::Incomplete);
    };
    if u32::from_be_bytes(*en) != enterprise {
        return Ok(None);
    }
    for option in dhcpv6_options(rest) {
        let (code, value) = option?;
        if code == DHCPV6_SUBOPTION {
            return decode_list(value).map(Some);
        }
    }
    Ok(None)
}

/// The DHCPv6 options in `area` (code and length in 16 bits each, RFC 8415 section 21.1) as
/// (code, data), in order; one that does not fit is an error, and the last item.
fn dhcpv6_options(mut area: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    std::iter::from_fn(move || {
        if area.is_empty() {
            return None;
        }
        let option = area.split_first_chunk::<4>().and_then(|(head, tail)| {
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let data = tail.get(..len)?;
            Some((u16::from_be_bytes([head[0], head[1]]), data, &tail[len..]))
        });
        match option {
            Some((code, data, rest)) => {
                area = rest;
                Some(Ok((code, data)))
            }
            None => {
                area = &[];
                Some(Err(DecodeError::Incomplete))
            }
        }
    })
}

/// The magic cookie that starts the options of a DHCPv4 message (RFC 2131 section 3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The proxy list in a whole DHCPv6 message (RFC 8415 section 8: a message type, a 3-byte
/// transaction id, then options) from the Vendor-specific Information option of
/// `enterprise`; a message may carry one such option per enterprise. `None` when none is
/// `enterprise`'s or holds the sub-option.
pub fn dhcpv6_vendor_list(
    message: &[u8],
    enterprise: u32,
) -> Result<Option<Vec<String>>, DecodeError> {
    for option in dhcpv6_options(message.get(4..).ok_or(DecodeError::Incomplete)?) {
        let (code, value) = option?;
        if code == OPTION_VENDOR_OPTS {
            if let Some(list) = decode_dhcpv6_vendor(value, enterprise)? {
                return Ok(Some(list));
            }
        }
    }
    Ok(None)
}

/// A DHCPv6 Information-Request (RFC 8415 section 18.2.6): transaction `xid`, a Client
/// Identifier (DUID-LL of Ethernet address `mac`), an Option Request for the Vendor-specific
/// Information option, and an Elapsed Time of zero.
pub fn dhcpv6_information_request(xid: [u8; 3], mac: [u8; 6]) -> Vec<u8> {
    let mut m = vec![11, xid[0], xid[1], xid[2]];
    // OPTION_CLIENTID (1): DUID-LL (3), hardware type Ethernet (1), the address.
    m.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1]);
    m.extend_from_slice(&mac);
    // OPTION_ORO (6): OPTION_VENDOR_OPTS.
    m.extend_from_slice(&[0, 6, 0, 2]);
    m.extend_from_slice(&OPTION_VENDOR_OPTS.to_be_bytes());
    // OPTION_ELAPSED_TIME (8): 0.
    m.extend_from_slice(&[0, 8, 0, 2, 0, 0]);
    m
}

/// Whether `message` is a DHCPv6 Reply (7) to transaction `xid`.
pub fn is_dhcpv6_reply_for(message: &[u8], xid: [u8; 3]) -> bool {
    message.first() == Some(&7) && message.get(1..4) == Some(&xid[..])
}

/// The longest valid lifetime (seconds) of the addresses and prefixes a whole DHCPv6 message
/// leases (IA_NA's IAADDR, IA_PD's IAPREFIX; RFC 8415 sections 21.4, 21.6, 21.21, 21.22);
/// `None` when it leases none. `u32::MAX` means infinite.
pub fn dhcpv6_valid_lifetime(message: &[u8]) -> Option<u32> {
    let be32 = |b: &[u8]| Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?));
    let mut longest = None;
    // What is read before an option that does not fit still counts.
    let options = |area| dhcpv6_options(area).map_while(Result::ok);
    for (code, ia) in options(message.get(4..)?) {
        // IA_NA (3) and IA_PD (25): IAID, T1, T2, then their own options.
        if code != 3 && code != 25 {
            continue;
        }
        for (sub, data) in options(ia.get(12..).unwrap_or(&[])) {
            let valid = match sub {
                5 => data.get(20..).and_then(be32), // IAADDR: address, preferred, valid
                26 => data.get(4..).and_then(be32), // IAPREFIX: preferred, valid, ...
                _ => None,
            };
            longest = longest.max(valid);
        }
    }
    longest
}

/// Where the magic cookie sits in a DHCPv4 message (after the fixed BOOTP fields).
const OPTIONS_AT: usize = 236;

/// The data of option `code` in a whole DHCPv4 message, its instances concatenated in order
/// (RFC 3396); `None` when the message does not carry it. The `file` and `sname` fields are
/// searched too when option 52 says they are overloaded with options.
pub fn dhcpv4_option(message: &[u8], code: u8) -> Result<Option<Vec<u8>>, DecodeError> {
    if message.get(OPTIONS_AT..OPTIONS_AT + 4) != Some(&MAGIC_COOKIE[..]) {
        return Err(DecodeError::Invalid("not a DHCP message (no magic cookie)"));
    }
    let mut found: Option<Vec<u8>> = None;
    let mut overload = 0u8;
    scan_options(&message[OPTIONS_AT + 4..], code, &mut found, &mut overload)?;
    // RFC 2131 section 4.1: the file field (108..236) first, then sname (44..108).
    if overload & 1 != 0 {
        scan_options(&message[108..236], code, &mut found, &mut 0)?;
    }
    if overload & 2 != 0 {
        scan_options(&message[44..108], code, &mut found, &mut 0)?;
    }
    Ok(found)
}

/// A DHCPINFORM (RFC 2131 section 3.4) from a host that already has `address`, asking for
/// option `code`: BOOTREQUEST, Ethernet `mac`, transaction `xid`, `ciaddr` set (the answer
/// comes unicast to it), the message type, a parameter request list naming `code` and a
/// maximum message size of 1500 (option 57, so that a long list is not cut to 576 bytes),
/// padded to the 300 bytes BOOTP relays and old servers expect.
pub fn dhcpinform(xid: u32, mac: [u8; 6], address: std::net::Ipv4Addr, code: u8) -> Vec<u8> {
    let mut m = vec![0u8; OPTIONS_AT];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6; // hardware address length
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[12..16].copy_from_slice(&address.octets());
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&[53, 1, 8]); // DHCPINFORM
    m.extend_from_slice(&[55, 1, code]);
    m.extend_from_slice(&[57, 2, 0x05, 0xdc]);
    m.push(255);
    m.resize(m.len().max(300), 0);
    m
}

/// Whether `message` is a DHCPACK (a BOOTREPLY of message type 5) to transaction `xid`.
pub fn is_ack_for(message: &[u8], xid: u32) -> bool {
    message.first() == Some(&2)
        && message.get(4..8) == Some(&xid.to_be_bytes()[..])
        && matches!(dhcpv4_option(message, 53), Ok(Some(t)) if t == [5])
}

fn scan_options(
    mut area: &[u8],
    code: u8,
    found: &mut Option<Vec<u8>>,
    overload: &mut u8,
) -> Result<(), DecodeError> {
    while let Some((&c, rest)) = area.split_first() {
        match c {
            0 => area = rest,     // Pad.
            255 => return Ok(()), // End.
            _ => {
                let (&len, rest) = rest.split_first().ok_or(DecodeError::Incomplete)?;
                let value = rest
                    .get(..usize::from(len))
                    .ok_or(DecodeError::Incomplete)?;
                if c == code {
                    found.get_or_insert_with(Vec::new).extend_from_slice(value);
                } else if c == 52 && len == 1 {
                    *overload = value[0];
                }
                area = &rest[usize::from(len)..];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAFT: &str = include_str!("../../../../docs/draft-socksng.md");

    /// The `option NAME HEX` lines of the draft's Appendix A.2.
    fn draft_vector(name: &str) -> Vec<u8> {
        let line = DRAFT
            .lines()
            .filter_map(|l| l.strip_prefix("option "))
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("vector {name} missing from the draft"));
        line.split_whitespace()
            .skip(1)
            .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
            .collect()
    }

    #[test]
    fn dhcpv6_messages_are_searched_for_the_enterprise() {
        let text = "socks5h://[2001:db8::1]:1080";
        let ours = encode_dhcpv6(DEFAULT_DHCPV6_ENTERPRISE, text).unwrap();
        let theirs = encode_dhcpv6(9, "socks5h://other:1").unwrap();
        // A Reply (7), transaction 0xabcdef, a client id, another enterprise's option, ours.
        let mut m = vec![7, 0xab, 0xcd, 0xef, 0, 1, 0, 2, 0xaa, 0xbb];
        m.extend_from_slice(&theirs);
        m.extend_from_slice(&ours);
        assert_eq!(
            dhcpv6_vendor_list(&m, DEFAULT_DHCPV6_ENTERPRISE).unwrap(),
            Some(vec![text.to_string()])
        );
        assert_eq!(
            dhcpv6_vendor_list(&m, 9).unwrap(),
            Some(vec!["socks5h://other:1".to_string()])
        );
        assert_eq!(dhcpv6_vendor_list(&m, 1).unwrap(), None);
        assert_eq!(dhcpv6_vendor_list(&m[..4], 1).unwrap(), None);
        // Truncated anywhere: an error, never a panic.
        // Truncated: at an option boundary nothing is found, anywhere else it is an error.
        for cut in 0..m.len() {
            let r = dhcpv6_vendor_list(&m[..cut], DEFAULT_DHCPV6_ENTERPRISE);
            if [4, 10, 10 + theirs.len()].contains(&cut) {
                assert_eq!(r.unwrap(), None, "cut {cut}");
            } else {
                assert!(r.is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn dhcpv6_information_request_and_its_reply() {
        let m = dhcpv6_information_request([1, 2, 3], [2, 0, 0, 0, 0, 9]);
        assert_eq!(
            m,
            [
                11, 1, 2, 3, 0, 1, 0, 10, 0, 3, 0, 1, 2, 0, 0, 0, 0, 9, 0, 6, 0, 2, 0, 17, 0, 8, 0,
                2, 0, 0
            ]
        );
        assert!(!is_dhcpv6_reply_for(&m, [1, 2, 3]));
        let mut reply = vec![7, 1, 2, 3];
        reply.extend(
            encode_dhcpv6(DEFAULT_DHCPV6_ENTERPRISE, "socks5h://[2001:db8::1]:1080").unwrap(),
        );
        assert!(is_dhcpv6_reply_for(&reply, [1, 2, 3]));
        assert!(!is_dhcpv6_reply_for(&reply, [1, 2, 4]));
        assert!(!is_dhcpv6_reply_for(&reply[..3], [1, 2, 3]));
    }

    #[test]
    fn dhcpv6_lifetimes() {
        let opt = |code: u16, data: &[u8]| {
            let mut o = code.to_be_bytes().to_vec();
            o.extend_from_slice(&(data.len() as u16).to_be_bytes());
            o.extend_from_slice(data);
            o
        };
        let mut iaaddr = vec![0u8; 16];
        iaaddr.extend_from_slice(&[0, 0, 0x0e, 0x10, 0, 0, 0x1c, 0x20]); // 3600, 7200
        let mut ia_na = vec![0u8; 12];
        ia_na.extend(opt(5, &iaaddr));
        let mut iaprefix = vec![0, 0, 0, 1, 0, 0, 0x2a, 0x30, 56]; // 1, 10800, /56
        iaprefix.extend_from_slice(&[0u8; 16]);
        let mut ia_pd = vec![0u8; 12];
        ia_pd.extend(opt(26, &iaprefix));
        let mut m = vec![7, 1, 2, 3];
        m.extend(opt(1, &[0xaa]));
        m.extend(opt(3, &ia_na));
        assert_eq!(dhcpv6_valid_lifetime(&m), Some(7200));
        m.extend(opt(25, &ia_pd));
        assert_eq!(dhcpv6_valid_lifetime(&m), Some(10800));
        assert_eq!(dhcpv6_valid_lifetime(&m[..4]), None);
        for cut in 0..m.len() {
            let _ = dhcpv6_valid_lifetime(&m[..cut]);
        }
    }

    /// Appendix A.2: asking for the option, by DHCPINFORM and by Information-Request, and a
    /// Reply with two enterprises' vendor options.
    #[test]
    fn the_draft_request_vectors() {
        let inform = dhcpinform(
            0x1234_5678,
            [2, 0, 0, 0, 0, 1],
            "10.0.0.5".parse().unwrap(),
            224,
        );
        let options = draft_vector("dhcpinform-options");
        assert_eq!(&inform[OPTIONS_AT..OPTIONS_AT + options.len()], options);
        assert!(inform[OPTIONS_AT + options.len()..].iter().all(|&b| b == 0));
        assert_eq!(inform.len(), 300);
        assert_eq!(
            dhcpv6_information_request([0x12, 0x34, 0x56], [2, 0, 0, 0, 0, 1]),
            draft_vector("dhcpv6-info-request")
        );
        let reply = draft_vector("dhcpv6-reply");
        assert!(is_dhcpv6_reply_for(&reply, [0x12, 0x34, 0x56]));
        assert_eq!(
            dhcpv6_vendor_list(&reply, DEFAULT_DHCPV6_ENTERPRISE).unwrap(),
            Some(vec!["socks5h://[2001:db8::1]:1080".to_string()])
        );
    }

    /// Appendix A.2: two proxies under DHCPv4 code 224 and DHCPv6 enterprise 32473.
    #[test]
    fn the_draft_vectors() {
        let text = encode_list(&["socks5s://gw.example:1443", "socks5h://192.0.2.1:1080"]).unwrap();
        assert_eq!(
            encode_dhcpv4(224, &text),
            draft_vector("dhcpv4-two-proxies")
        );
        let v6 = draft_vector("dhcpv6-two-proxies");
        assert_eq!(encode_dhcpv6(32473, &text).unwrap(), v6);
        assert_eq!(
            decode_dhcpv6_vendor(&v6[4..], 32473).unwrap().unwrap(),
            ["socks5s://gw.example:1443", "socks5h://192.0.2.1:1080"]
        );
        assert_eq!(decode_dhcpv6_vendor(&v6[4..], 1).unwrap(), None);
        let v4 = draft_vector("dhcpv4-two-proxies");
        assert_eq!(
            decode_list(&v4[2..]).unwrap(),
            decode_list(text.as_bytes()).unwrap()
        );
    }

    #[test]
    fn lists_decode_as_receivers_must() {
        assert_eq!(decode_list(b"a://x b://y\0").unwrap(), ["a://x", "b://y"]);
        assert_eq!(decode_list(b"  a://x  ").unwrap(), ["a://x"]);
        assert!(decode_list(b"a://x\tb").is_err());
        assert!(decode_list("a://é".as_bytes()).is_err());
        assert!(encode_list(&["a b"]).is_err());
        assert!(encode_list(&[""]).is_err());
    }

    fn message(options: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_AT];
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(options);
        m
    }

    #[test]
    fn long_lists_split_and_rejoin() {
        let urls: Vec<String> = (0..30)
            .map(|i| format!("socks5h://proxy{i}.example:1080"))
            .collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let text = encode_list(&refs).unwrap();
        assert!(text.len() > 255);
        let mut opts = vec![53, 1, 5];
        opts.extend(encode_dhcpv4(230, &text));
        opts.push(255);
        let got = dhcpv4_option(&message(&opts), 230).unwrap().unwrap();
        assert_eq!(decode_list(&got).unwrap(), urls);
        assert_eq!(dhcpv4_option(&message(&opts), 231).unwrap(), None);
    }

    #[test]
    fn messages_are_checked() {
        assert!(dhcpv4_option(&[0u8; 100], 224).is_err());
        assert!(matches!(
            dhcpv4_option(&message(&[224, 10, b'a']), 224),
            Err(DecodeError::Incomplete)
        ));
        // Overloaded file field.
        let mut m = message(&[52, 1, 1, 255]);
        m[108..108 + 9].copy_from_slice(&[224, 6, b'a', b':', b'/', b'/', b'x', b'y', 255]);
        assert_eq!(dhcpv4_option(&m, 224).unwrap().unwrap(), b"a://xy");
    }

    #[test]
    fn dhcpinform_and_its_ack() {
        let m = dhcpinform(
            0x1234_5678,
            [2, 0, 0, 0, 0, 1],
            "10.0.0.5".parse().unwrap(),
            224,
        );
        assert_eq!(&m[..3], &[1, 1, 6]);
        assert_eq!(&m[12..16], &[10, 0, 0, 5]);
        assert_eq!(dhcpv4_option(&m, 53).unwrap().unwrap(), [8]);
        assert_eq!(dhcpv4_option(&m, 55).unwrap().unwrap(), [224]);
        assert_eq!(dhcpv4_option(&m, 57).unwrap().unwrap(), [0x05, 0xdc]);
        assert_eq!(m.len(), 300);
        assert!(!is_ack_for(&m, 0x1234_5678)); // a request, not a reply
        let mut ack = m[..OPTIONS_AT + 4].to_vec();
        ack[0] = 2;
        ack.extend_from_slice(&[53, 1, 5, 224, 4, b'a', b':', b'/', b'/', 255]);
        assert!(is_ack_for(&ack, 0x1234_5678));
        assert!(!is_ack_for(&ack, 1));
        assert_eq!(dhcpv4_option(&ack, 224).unwrap().unwrap(), b"a://");
    }

    #[test]
    fn site_specific_codes() {
        assert!(is_site_specific(224) && is_site_specific(254));
        assert!(!is_site_specific(223) && !is_site_specific(255));
    }
}
