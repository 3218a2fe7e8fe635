//! Where fleet mode keeps things in etcd, under `/switcher/<cluster>/`:
//!
//! - `desired/<service>`: what every host must run ([`super::model::Desired`]); its
//!   `mod_revision` is the generation hosts acknowledge. Written only by transactions that
//!   compare the revision they read.
//! - `hosts/<host>`: each host's report ([`super::model::HostReport`]), under that host's
//!   lease: it disappears when the host stops renewing it.
//! - `known/<host>`: that a host has joined, without a lease, so a silent host is shown as
//!   disconnected rather than forgotten.
//! - `driver/<service>`: the host driving that service's fleet deployment, under its lease.
//! - `audit/<ms>-<host>-<n>`: the audit trail (time, actor with host, reason, evidence).

#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("/switcher/{cluster}/"),
        }
    }

    pub fn desired_prefix(&self) -> String {
        format!("{}desired/", self.root)
    }

    pub fn desired(&self, service: &str) -> String {
        format!("{}desired/{service}", self.root)
    }

    /// Held (under its lease) by the host driving `service`'s fleet deployment.
    pub fn driver(&self, service: &str) -> String {
        format!("{}driver/{service}", self.root)
    }

    pub fn hosts_prefix(&self) -> String {
        format!("{}hosts/", self.root)
    }

    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.root)
    }

    pub fn known_prefix(&self) -> String {
        format!("{}known/", self.root)
    }

    pub fn known(&self, host: &str) -> String {
        format!("{}known/{host}", self.root)
    }

    pub fn audit_prefix(&self) -> String {
        format!("{}audit/", self.root)
    }

    /// Sorted by time as strings: the milliseconds are zero-padded.
    pub fn audit(&self, at_ms: u64, host: &str, n: u64) -> String {
        format!("{}audit/{at_ms:016}-{host}-{n}", self.root)
    }

    /// The last segment of `key` under `prefix` (a service or host name), if it is one.
    pub fn name_under<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(prefix)
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_the_cluster_and_names_come_back_out() {
        let k = Keys::new("edge-eu");
        assert_eq!(k.desired("syslog"), "/switcher/edge-eu/desired/syslog");
        assert_eq!(k.host("h1"), "/switcher/edge-eu/hosts/h1");
        assert_eq!(
            Keys::name_under(&k.desired_prefix(), &k.desired("syslog")),
            Some("syslog")
        );
        assert_eq!(
            Keys::name_under(&k.desired_prefix(), "/switcher/edge-eu/desired/"),
            None
        );
        assert_eq!(
            Keys::name_under(&k.desired_prefix(), "/switcher/other/desired/x"),
            None
        );
        // Another cluster whose name starts like this one's never matches.
        let other = Keys::new("edge-eu2");
        assert_eq!(
            Keys::name_under(&k.desired_prefix(), &other.desired("syslog")),
            None
        );
        assert!(
            k.audit(5, "h", 1) < k.audit(40, "h", 0),
            "audit keys sort by time"
        );
    }
}
