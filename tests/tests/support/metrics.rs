//! `/metrics` parsed by a real OpenMetrics parser (see parse_openmetrics.py) into samples the
//! tests can query.

use std::{collections::BTreeMap, io::Write as _, process::Stdio};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub family: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Scrape(pub Vec<Sample>);

pub fn parse(text: &str) -> Result<Scrape> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/parse_openmetrics.py"
    );
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running /usr/bin/python3 (cargo xtask setup installs python3-prometheus-client)",
        )?;
    child
        .stdin
        .take()
        .context("parser stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the OpenMetrics parser rejected /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Scrape(serde_json::from_slice(&out.stdout)?))
}

impl Scrape {
    /// The value of sample `name` whose labels include all of `labels`; None when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`] for a series that must be there: an absent series fails the
    /// test (a metric that disappeared must not read as zero). Where absence is a legitimate
    /// zero (a labelled counter never incremented), say so with `get(..).unwrap_or(0.0)`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(v) => v,
            None => panic!("{name}{labels:?} is not exported"),
        }
    }

    pub fn kind(&self, family: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
    }
}
