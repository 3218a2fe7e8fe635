//! rsyslog as a log shipper on a lab host: it takes lines on a local TCP input and forwards
//! them through the switch over plain TCP (`omfwd`, octet counting), RELP (`omrelp`) or TLS
//! (`omfwd` with the gtls driver, verifying the collector's certificate against the CA and its
//! name). Every action queues in memory and retries for ever, as a shipper that must not drop
//! lines is set up; what it still loses is the protocol's doing.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::command::require_tool;
use super::{Host, Lab, Proc};

/// How a forwarder ships its lines.
#[derive(Clone, Debug)]
pub enum Shipping {
    Tcp,
    Relp,
    /// TLS, the server's certificate verified: issued by `ca`, for `peer`.
    Tls {
        ca: PathBuf,
        peer: String,
    },
}

/// One forwarder: lines in on `input` (a TCP address in its host), out to `target`.
#[derive(Clone, Debug)]
pub struct Forwarder {
    pub input: SocketAddr,
    pub target: SocketAddr,
    pub shipping: Shipping,
}

impl Forwarder {
    fn config(&self, workdir: &Path) -> String {
        let (mut global, mut modules) = (String::new(), String::from("module(load=\"imtcp\")\n"));
        let (t, port) = (self.target.ip(), self.target.port());
        // An in-memory queue that never drops, retried every second for ever.
        let keep = "template=\"RSYSLOG_SyslogProtocol23Format\" queue.type=\"LinkedList\" \
                    queue.size=\"200000\" action.resumeRetryCount=\"-1\" action.resumeInterval=\"1\"";
        let action = match &self.shipping {
            Shipping::Tcp => format!(
                "action(type=\"omfwd\" target=\"{t}\" port=\"{port}\" protocol=\"tcp\" \
                 tcp_framing=\"octet-counted\" {keep})"
            ),
            Shipping::Relp => {
                modules += "module(load=\"omrelp\")\n";
                format!("action(type=\"omrelp\" target=\"{t}\" port=\"{port}\" {keep})")
            }
            Shipping::Tls { ca, peer } => {
                global = format!(" DefaultNetstreamDriverCAFile=\"{}\"", ca.display());
                format!(
                    "action(type=\"omfwd\" target=\"{t}\" port=\"{port}\" protocol=\"tcp\" \
                     tcp_framing=\"octet-counted\" StreamDriver=\"gtls\" StreamDriverMode=\"1\" \
                     StreamDriverAuthMode=\"x509/name\" StreamDriverPermittedPeers=\"{peer}\" {keep})"
                )
            }
        };
        format!(
            "global(workDirectory=\"{work}\" net.enableDNS=\"off\"{global})\n{modules}\
             ruleset(name=\"forward\") {{\n    {action}\n}}\n\
             input(type=\"imtcp\" address=\"{ip}\" port=\"{iport}\" ruleset=\"forward\")\n",
            work = workdir.display(),
            ip = self.input.ip(),
            iport = self.input.port(),
        )
    }
}

impl Lab {
    /// Starts rsyslogd in `host` as `f` says, its config and state in `workdir`; returns once
    /// its input listens. Tracked like [`Lab::spawn`]; SIGTERM stops it.
    pub fn start_forwarder(&self, host: Host, f: &Forwarder, workdir: &Path) -> Result<Proc> {
        require_tool("rsyslogd", "-v", "rsyslog")?;
        fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
        let workdir = std::path::absolute(workdir).context("absolute workdir")?;
        if workdir.to_string_lossy().contains(['"', '\\']) {
            bail!("no quotes in rsyslog paths: {}", workdir.display());
        }
        let conf = workdir.join("forwarder.conf");
        let pid = workdir.join("forwarder.pid");
        fs::write(&conf, f.config(&workdir))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut cmd = self.command(host, "rsyslogd");
        cmd.arg("-n").arg("-f").arg(&conf).arg("-i").arg(&pid);
        let proc = self.spawn_command(cmd)?;
        let listening = self.wait_listening(
            host,
            &[f.input.ip()],
            &[],
            &[f.input.port()],
            &proc,
            Duration::from_secs(10),
        );
        if let Err(e) = listening {
            let _ = proc.stop();
            return Err(e.context(format!(
                "the forwarder rsyslogd did not come up; stderr:\n{}",
                proc.stderr_tail(10)
            )));
        }
        Ok(proc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shipping_gets_its_action() {
        let f = |shipping| Forwarder {
            input: "127.0.0.1:10601".parse().expect("addr"),
            target: "198.18.10.10:6514".parse().expect("addr"),
            shipping,
        };
        let w = Path::new("/w");
        let tcp = f(Shipping::Tcp).config(w);
        assert!(
            tcp.contains("type=\"omfwd\"") && !tcp.contains("gtls"),
            "{tcp}"
        );
        assert!(tcp.contains("input(type=\"imtcp\" address=\"127.0.0.1\" port=\"10601\""));
        let relp = f(Shipping::Relp).config(w);
        assert!(relp.contains("module(load=\"omrelp\")") && relp.contains("type=\"omrelp\""));
        let tls = f(Shipping::Tls {
            ca: "/c/ca.pem".into(),
            peer: "ingest.lab".into(),
        })
        .config(w);
        assert!(
            tls.contains("DefaultNetstreamDriverCAFile=\"/c/ca.pem\""),
            "{tls}"
        );
        assert!(tls.contains("StreamDriverAuthMode=\"x509/name\""), "{tls}");
        assert!(
            tls.contains("StreamDriverPermittedPeers=\"ingest.lab\""),
            "{tls}"
        );
        for c in [&tcp, &relp, &tls] {
            assert!(c.contains("action.resumeRetryCount=\"-1\""), "{c}");
        }
    }
}
