//! Results: the per-(subject, case) record, its JSON line (with ratios to direct) and the final
//! markdown table with its notes.

use crate::cases::Case;
use crate::stats::{round, Summary};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How a case ended for a subject.
#[derive(Debug, Clone)]
pub enum Status {
    /// At least one repeat measured.
    Ok,
    /// The subject cannot do this (no UDP, no auth, no proxy).
    NotApplicable(String),
    /// It should have worked and did not.
    Failed(String),
}

/// Everything measured for one subject and case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Subject name.
    pub subject: String,
    /// Subject version string.
    pub version: String,
    /// The case.
    pub case: Case,
    /// Outcome.
    pub status: Status,
    /// Figures summarised over repeats.
    pub metrics: BTreeMap<&'static str, Summary>,
    /// Failures by kind, all repeats together.
    pub errors: BTreeMap<String, u64>,
    /// Repeats that failed, with why.
    pub failed_repeats: Vec<String>,
    /// Case facts from the last good repeat.
    pub extra: Map<String, Value>,
    /// Repeats asked for.
    pub repeats: usize,
    /// A remark for readers (also printed under the table).
    pub note: Option<String>,
}

impl CaseResult {
    /// A result with no figures.
    pub fn empty(subject: &str, version: &str, case: Case, status: Status, repeats: usize) -> Self {
        CaseResult {
            subject: subject.into(),
            version: version.into(),
            case,
            status,
            metrics: BTreeMap::new(),
            errors: BTreeMap::new(),
            failed_repeats: Vec::new(),
            extra: Map::new(),
            repeats,
            note: None,
        }
    }

    /// The JSON line; ratios use the direct result for the same case when there is one.
    pub fn to_json(&self, direct: Option<&CaseResult>) -> Value {
        let (status, reason) = match &self.status {
            Status::Ok => ("ok", None),
            Status::NotApplicable(r) => ("n/a", Some(r.clone())),
            Status::Failed(r) => ("error", Some(r.clone())),
        };
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_json()))
            .collect();
        let mut ratios = Map::new();
        if let Some(d) = direct.filter(|d| d.subject != self.subject) {
            for (k, s) in &self.metrics {
                if let Some(r) = ratio(s, d.metrics.get(k)) {
                    ratios.insert(k.to_string(), json!(round(r)));
                }
            }
        }
        json!({
            "subject": self.subject,
            "version": self.version,
            "case": self.case.name(),
            "status": status,
            "reason": reason,
            "repeats": self.repeats,
            "metrics": metrics,
            "ratio_to_direct": ratios,
            "errors": self.errors,
            "failed_repeats": self.failed_repeats,
            "note": self.note,
            "details": self.extra,
        })
    }
}

fn ratio(s: &Summary, direct: Option<&Summary>) -> Option<f64> {
    let d = direct?.median;
    (d != 0.0 && d.is_finite()).then(|| s.median / d)
}

/// One row of the table: a case's figure.
struct Row {
    case: Case,
    metric: &'static str,
    label: String,
}

fn rows(streams: usize, idle: (usize, usize)) -> Vec<Row> {
    let r = |case, metric, label: &str| Row {
        case,
        metric,
        label: label.to_owned(),
    };
    vec![
        r(Case::TcpUp1, "gbit_s", "TCP upload, 1 stream, Gbit/s"),
        r(Case::TcpDown1, "gbit_s", "TCP download, 1 stream, Gbit/s"),
        r(
            Case::TcpUpPar,
            "gbit_s",
            &format!("TCP upload, {streams} streams, Gbit/s"),
        ),
        r(
            Case::TcpDownPar,
            "gbit_s",
            &format!("TCP download, {streams} streams, Gbit/s"),
        ),
        r(
            Case::TcpUp1,
            "gb_per_proxy_cpu_s",
            "GB relayed per proxy CPU-s, upload 1",
        ),
        r(
            Case::TcpDown1,
            "gb_per_proxy_cpu_s",
            "GB relayed per proxy CPU-s, download 1",
        ),
        r(
            Case::TcpUpPar,
            "gb_per_proxy_cpu_s",
            &format!("GB relayed per proxy CPU-s, upload {streams}"),
        ),
        r(
            Case::TcpDownPar,
            "gb_per_proxy_cpu_s",
            &format!("GB relayed per proxy CPU-s, download {streams}"),
        ),
        r(
            Case::TcpUp1,
            "gb_per_proxy_core_s",
            "GB per proxy-core busy s (incl. softirq), upload 1",
        ),
        r(
            Case::TcpDown1,
            "gb_per_proxy_core_s",
            "GB per proxy-core busy s (incl. softirq), download 1",
        ),
        r(
            Case::TcpUpPar,
            "gb_per_proxy_core_s",
            &format!("GB per proxy-core busy s (incl. softirq), upload {streams}"),
        ),
        r(
            Case::TcpDownPar,
            "gb_per_proxy_core_s",
            &format!("GB per proxy-core busy s (incl. softirq), download {streams}"),
        ),
        r(Case::Handshake, "per_s", "Handshakes/s (no auth)"),
        r(Case::Handshake, "p50_ms", "Handshake p50, ms"),
        r(Case::Handshake, "p99_ms", "Handshake p99, ms"),
        r(Case::Handshake, "p999_ms", "Handshake p99.9, ms"),
        r(
            Case::Handshake,
            "proxy_cpu_util",
            "Proxy process CPU during handshakes, cores",
        ),
        r(
            Case::Handshake,
            "proxy_core_util",
            "Proxy core busy during handshakes (incl. softirq)",
        ),
        r(
            Case::HandshakeAuth,
            "per_s",
            "Handshakes/s (username/password)",
        ),
        r(Case::HandshakeAuth, "p50_ms", "Handshake+auth p50, ms"),
        r(Case::HandshakeAuth, "p99_ms", "Handshake+auth p99, ms"),
        r(Case::HandshakeAuth, "p999_ms", "Handshake+auth p99.9, ms"),
        r(
            Case::IdleSmall,
            "rss_kib_per_conn",
            &format!("RSS KiB per idle conn, {} conns", idle.0),
        ),
        r(
            Case::IdleSmall,
            "pss_kib_per_conn",
            &format!("PSS KiB per idle conn, {} conns", idle.0),
        ),
        r(
            Case::IdleMax,
            "rss_kib_per_conn",
            &format!("RSS KiB per idle conn, {} conns", idle.1),
        ),
        r(
            Case::IdleMax,
            "pss_kib_per_conn",
            &format!("PSS KiB per idle conn, {} conns", idle.1),
        ),
        r(Case::UdpRtt, "per_s", "UDP round trips/s"),
        r(Case::UdpRtt, "p99_us", "UDP round trip p99, µs"),
        r(Case::UdpTput, "gbit_s", "UDP throughput, Gbit/s"),
        r(Case::UdpTput, "loss", "UDP throughput, loss fraction"),
        r(
            Case::UdpStreamRtt,
            "per_s",
            "UDP over the stream, round trips/s",
        ),
        r(
            Case::UdpStreamRtt,
            "p99_us",
            "UDP over the stream, round trip p99, µs",
        ),
        r(
            Case::UdpStreamTput,
            "gbit_s",
            "UDP over the stream, throughput, Gbit/s",
        ),
        r(
            Case::UdpStreamTput,
            "loss",
            "UDP over the stream, loss fraction",
        ),
        r(
            Case::UdpIdle,
            "rss_kib_per_conn",
            "RSS KiB per idle UDP association",
        ),
        r(
            Case::UdpIdle,
            "pss_kib_per_conn",
            "PSS KiB per idle UDP association",
        ),
    ]
}

/// A number with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

fn cell(res: Option<&CaseResult>, metric: &str, direct: Option<&CaseResult>) -> String {
    let Some(res) = res else {
        return "–".into();
    };
    match &res.status {
        Status::NotApplicable(_) => return "n/a".into(),
        Status::Failed(_) => return "error".into(),
        Status::Ok => {}
    }
    let Some(s) = res.metrics.get(metric) else {
        return "–".into();
    };
    let mut out = fmt_num(s.median);
    if s.values.len() > 1 {
        let _ = write!(out, " [{}–{}]", fmt_num(s.min), fmt_num(s.max));
    }
    if let Some(d) = direct.filter(|d| d.subject != res.subject) {
        if let Some(r) = ratio(s, d.metrics.get(metric)) {
            let _ = write!(out, " ({}×)", fmt_num(r));
        }
    }
    out
}

/// The markdown table (figures as rows, subjects as columns) and notes on every n/a, error
/// and failed operation.
pub fn table(
    results: &[CaseResult],
    subjects: &[String],
    streams: usize,
    idle: (usize, usize),
) -> String {
    let find = |s: &str, c: Case| results.iter().find(|r| r.subject == s && r.case == c);
    let mut out = String::new();
    if results.is_empty() {
        return "(no case completed)\n".into();
    }
    let _ = write!(out, "| figure |");
    for s in subjects {
        let _ = write!(out, " {s} |");
    }
    let _ = write!(out, "\n|---|");
    for _ in subjects {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    for row in rows(streams, idle) {
        if !results
            .iter()
            .any(|r| r.case == row.case && r.metrics.contains_key(row.metric))
        {
            continue;
        }
        let _ = write!(out, "| {} |", row.label);
        let direct = find("direct", row.case);
        for s in subjects {
            let _ = write!(out, " {} |", cell(find(s, row.case), row.metric, direct));
        }
        out.push('\n');
    }
    // The load generator's own CPU, and CPU used by anything else on the machine (a disturbed
    // run shows here): the busiest case of each, as a fraction of one core.
    for (metric, label) in [
        ("gen_cpu_util", "Load generator CPU, busiest case"),
        (
            "other_cpu_util",
            "Other processes' CPU on the machine, worst case",
        ),
    ] {
        if !results.iter().any(|r| r.metrics.contains_key(metric)) {
            continue;
        }
        let _ = write!(out, "| {label} |");
        for s in subjects {
            let busiest = results
                .iter()
                .filter(|r| &r.subject == s)
                .filter_map(|r| r.metrics.get(metric).map(|m| (m.median, r.case)))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match busiest {
                Some((v, c)) => {
                    let _ = write!(out, " {:.0}% ({}) |", v * 100.0, c.name());
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    let mut notes = Vec::new();
    for r in results {
        match &r.status {
            Status::NotApplicable(why) => {
                notes.push(format!("{} {}: n/a: {why}", r.subject, r.case.name()))
            }
            Status::Failed(why) => {
                notes.push(format!("{} {}: error: {why}", r.subject, r.case.name()))
            }
            Status::Ok => {}
        }
        if let Some(n) = &r.note {
            notes.push(format!("{} {}: {n}", r.subject, r.case.name()));
        }
        for f in &r.failed_repeats {
            notes.push(format!(
                "{} {}: failed repeat: {f}",
                r.subject,
                r.case.name()
            ));
        }
        if !r.errors.is_empty() {
            let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
            notes.push(format!(
                "{} {}: failed operations: {}",
                r.subject,
                r.case.name(),
                list.join(", ")
            ));
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_format() {
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(0.0), "0");
    }

    #[test]
    fn table_shows_ratio_and_na() {
        let mut d = CaseResult::empty("direct", "", Case::TcpUp1, Status::Ok, 1);
        d.metrics.insert("gbit_s", Summary::of(&[10.0]).unwrap());
        let mut s = CaseResult::empty("x", "", Case::TcpUp1, Status::Ok, 1);
        s.metrics.insert("gbit_s", Summary::of(&[5.0]).unwrap());
        let n = CaseResult::empty("y", "", Case::TcpUp1, Status::NotApplicable("no".into()), 1);
        let subjects = vec!["direct".to_string(), "x".to_string(), "y".to_string()];
        let t = table(&[d.clone(), s.clone(), n], &subjects, 64, (1000, 10000));
        assert!(
            t.contains("| TCP upload, 1 stream, Gbit/s | 10.0 | 5.00 (0.500×) | n/a |"),
            "{t}"
        );
        assert!(t.contains("- y tcp-up-1: n/a: no"));
        let j = s.to_json(Some(&d));
        assert_eq!(j["ratio_to_direct"]["gbit_s"], json!(0.5));
    }
}
