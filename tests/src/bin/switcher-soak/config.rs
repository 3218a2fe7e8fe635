//! The config files the reload operations write: the rig's own config with or without one
//! extra service (a valid change a reload must apply), and bad variants of it (one error
//! beside a valid change: a reload must apply none of it and name the field).

use anyhow::{bail, Result};

use crate::plan::BAD_CONFIGS;

/// A service no traffic uses, added and removed by reloads.
pub const EXTRA_NAME: &str = "extra";
const EXTRA: &str = "\n[[service]]\nname = \"extra\"\nvip = \"198.18.10.11\"\nport = 514\nprotocol = \"udp\"\nblue = { backend = \"198.18.1.2:1514\" }\n";

pub struct Configs {
    base: String,
    /// Whether the applied config (and the file) has the extra service.
    pub extra: bool,
}

impl Configs {
    pub fn new(base: String) -> Configs {
        Configs { base, extra: false }
    }

    /// The valid config, with the extra service or without.
    pub fn good(&self, extra: bool) -> String {
        if extra {
            format!("{}{EXTRA}", self.base)
        } else {
            self.base.clone()
        }
    }

    /// Bad variant `variant`: the extra service toggled (a change that would be visible) and
    /// one error in the first service (udp4). Returns the text and what the error must name.
    pub fn bad(&self, variant: usize) -> Result<(String, &'static str)> {
        let text = self.good(!self.extra);
        let (from, to, field) = match variant % BAD_CONFIGS {
            0 => ("port = 514", "port = 99999", "service[0].port"),
            1 => (
                "green = { backend = \"198.18.2.2:514\" }",
                "green = { backend = \"198.18.2.2\" }",
                "service[0].green",
            ),
            _ => (
                "interval_ms = 250",
                "interval_ms = 5",
                "service[0].watch.interval_ms",
            ),
        };
        if !text.contains(from) {
            bail!("the rig's config has no {from:?} to break");
        }
        Ok((text.replacen(from, to, 1), field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_variants_break_the_first_service_and_toggle_the_extra_one() -> Result<()> {
        let base = switcher_tests::services::lab_config(
            "to-client",
            std::path::Path::new("/sys/fs/bpf/x"),
            std::path::Path::new("/tmp/x"),
            &switcher_tests::rig::standard_services(
                "redirect",
                switcher_tests::services::STANDARD_CHECKS,
            ),
        );
        let mut c = Configs::new(base.clone());
        assert_eq!(c.good(false), base);
        assert!(c.good(true).contains("name = \"extra\""));
        for v in 0..BAD_CONFIGS {
            let (bad, field) = c.bad(v)?;
            assert_ne!(bad, c.good(true), "{field}");
            assert!(bad.contains("name = \"extra\""));
        }
        c.extra = true;
        assert!(!c.bad(0)?.0.contains("name = \"extra\""));
        Ok(())
    }
}
