//! The one `/metrics` parser: a scrape of the admin endpoint, read by exact series name
//! (`name{labels}`) or summed over every series of a family.

use std::io;
use std::net::SocketAddr;

use crate::client::http_get;

/// One `/metrics` exposition.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    text: String,
}

impl Scrape {
    /// Fetches `/metrics` from the admin address.
    pub fn fetch(admin: SocketAddr) -> io::Result<Self> {
        let (status, text) = http_get(admin, "/metrics")?;
        if status != 200 {
            return Err(io::Error::other(format!("/metrics answered {status}")));
        }
        Ok(Self { text })
    }

    /// Fetches, or an empty scrape (every value 0) if the director does not answer.
    pub fn fetch_or_empty(admin: SocketAddr) -> Self {
        Self::fetch(admin).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Self {
        Self {
            text: text.to_string(),
        }
    }

    /// The value of one series, exactly as exposed (`udp_director_sessions_active`,
    /// `udp_director_datagrams_dropped_total{reason="empty"}`); 0 when absent.
    pub fn value(&self, series: &str) -> f64 {
        self.samples()
            .find(|(name, _)| *name == series)
            .map_or(0.0, |(_, v)| v)
    }

    /// The sum of every series whose name (labels included) starts with `prefix`.
    pub fn sum(&self, prefix: &str) -> f64 {
        self.samples()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// The sum of `family{label="value"}` over the given label values.
    pub fn sum_of(&self, family: &str, label: &str, values: &[&str]) -> f64 {
        values
            .iter()
            .map(|v| self.value(&format!("{family}{{{label}=\"{v}\"}}")))
            .sum()
    }

    /// Datagrams dropped for any of `reasons`.
    pub fn drops(&self, reasons: &[&str]) -> f64 {
        self.sum_of("udp_director_datagrams_dropped_total", "reason", reasons)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// `(series, value)` of every sample line.
    fn samples(&self) -> impl Iterator<Item = (&str, f64)> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series, value.trim().parse().ok()?))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sums_and_absent_series() {
        let s = Scrape::parse(
            "# TYPE x counter\nudp_director_sessions_active 3\nudp_director_datagrams_dropped_total{reason=\"empty\"} 2\nudp_director_datagrams_dropped_total{reason=\"no_session\"} 5\n# EOF\n",
        );
        assert_eq!(s.value("udp_director_sessions_active"), 3.0);
        assert_eq!(s.drops(&["empty", "no_session"]), 7.0);
        assert_eq!(s.sum("udp_director_datagrams_dropped_total"), 7.0);
        assert_eq!(s.value("udp_director_sessions"), 0.0, "exact names only");
        assert_eq!(s.value("missing"), 0.0);
    }
}
