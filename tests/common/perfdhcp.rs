//! Kea's `perfdhcp` load generator: where it is and what its report says.

use std::collections::BTreeMap;

/// Where perfdhcp may be.
pub const PERFDHCP: &[&str] = &["/usr/sbin/perfdhcp", "/usr/bin/perfdhcp"];

/// perfdhcp's `***Statistics for: X***` blocks as `X → key → value`, plus the
/// `***Leases for X***` lists (`-x l`) as `X → [(mac, yiaddr)]`.
#[derive(Debug, Default)]
pub struct PerfReport {
    pub stats: BTreeMap<String, BTreeMap<String, String>>,
    pub leases: BTreeMap<String, Vec<(String, String)>>,
    pub malformed: Option<u64>,
}

impl PerfReport {
    pub fn parse(text: &str) -> PerfReport {
        let mut report = PerfReport::default();
        enum Section {
            None,
            Stats(String),
            Leases(String),
        }
        let mut section = Section::None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("***Statistics for: ").and_then(|l| l.strip_suffix("***")) {
                section = Section::Stats(name.to_string());
            } else if let Some(name) = line.strip_prefix("***Leases for ").and_then(|l| l.strip_suffix("***")) {
                report.leases.entry(name.to_string()).or_default();
                section = Section::Leases(name.to_string());
            } else if line.starts_with("***") {
                section = Section::None;
            } else if let Some(n) = line.strip_prefix("Malformed packets: ") {
                report.malformed = n.trim().parse().ok();
            } else {
                match &section {
                    Section::Stats(name) => {
                        if let Some((k, v)) = line.split_once(": ") {
                            report.stats.entry(name.clone()).or_default().insert(k.to_string(), v.to_string());
                        }
                    }
                    Section::Leases(name) => {
                        // `client_id,address,prefix`; the client id is 01 + MAC (hex).
                        let cols: Vec<&str> = line.split(',').collect();
                        if cols.len() >= 2 && cols[0] != "client_id" {
                            let mac = cols[0]
                                .get(2..14)
                                .map(|hex| {
                                    hex.as_bytes()
                                        .chunks(2)
                                        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_lowercase())
                                        .collect::<Vec<_>>()
                                        .join(":")
                                })
                                .unwrap_or_default();
                            report.leases.get_mut(name).unwrap().push((mac, cols[1].to_string()));
                        }
                    }
                    Section::None => {}
                }
            }
        }
        report
    }

    pub fn num(&self, exchange: &str, key: &str) -> u64 {
        let v = self.stats.get(exchange).and_then(|s| s.get(key)).unwrap_or_else(|| panic!("no {exchange} {key}"));
        v.trim().parse().unwrap_or_else(|_| panic!("{exchange} {key}: {v:?}"))
    }
}
