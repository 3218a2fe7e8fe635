//! rsyslog in the lab: [`Lab::start_rsyslog`] and [`Lab::start_rsyslog_at`] write a config for a
//! real `rsyslogd` (imudp and imtcp, optionally imrelp, into one raw-message file), start it in
//! a namespace and wait until it listens.

use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::command::require_tool;
use super::{Host, Lab, Proc};

/// What a lab rsyslog does beyond imudp and imtcp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RsyslogExtras {
    /// An imrelp input (RELP over TCP, rsyslog-relp) on this port, on the same addresses.
    pub relp_port: Option<u16>,
    /// Parameters of rsyslog's main queue, e.g. `queue.size="50" queue.dequeueSlowdown="5000"`:
    /// a collector whose processing cannot keep up, so its inputs hold back new messages.
    pub main_queue: Option<String>,
    /// Syslog over TLS (RFC 5425, imtcp with the gtls driver of rsyslog-gnutls).
    pub tls: Option<TlsInput>,
}

/// A TLS syslog input: its port and the server's certificate, key and CA (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInput {
    pub port: u16,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsInput {
    /// The input's stream-driver parameters.
    fn params(&self) -> String {
        format!(
            "streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\" \
             streamDriver.CAFile=\"{}\" streamDriver.CertFile=\"{}\" streamDriver.KeyFile=\"{}\"",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Lab {
    /// Starts a real `rsyslogd` in `host` listening with imudp and imtcp on `port` (IPv4 and
    /// IPv6, all addresses) and writing each received message as one line to `out_file`,
    /// exactly as received (`%rawmsg%`, syslog header included; TCP framing removed). Its
    /// config, pid file and state go to `workdir`. Returns once it listens. Tracked like
    /// [`Lab::spawn`]; SIGTERM makes rsyslog flush and exit.
    pub fn start_rsyslog(
        &self,
        host: Host,
        port: u16,
        out_file: &Path,
        workdir: &Path,
    ) -> Result<Proc> {
        self.start_rsyslog_at(
            host,
            &[],
            &[port],
            &RsyslogExtras::default(),
            out_file,
            workdir,
        )
    }

    /// Like [`Lab::start_rsyslog`], listening with imudp and imtcp on every one of `ports`, bound
    /// to each of `addrs` (their `address=` parameter), or to all addresses when `addrs` is
    /// empty: one rsyslog per ingest node ([`super::Node`]), each writing its own file. Give
    /// each its own `workdir`. `extras` adds a RELP input or tunes the main queue.
    pub fn start_rsyslog_at(
        &self,
        host: Host,
        addrs: &[IpAddr],
        ports: &[u16],
        extras: &RsyslogExtras,
        out_file: &Path,
        workdir: &Path,
    ) -> Result<Proc> {
        require_tool("rsyslogd", "-v", "rsyslog")?;
        let Some(&first_port) = ports.first() else {
            bail!("rsyslog needs at least one port");
        };
        fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
        // rsyslogd resolves relative paths against its own cwd, so hand it absolute ones.
        let workdir = std::path::absolute(workdir).context("absolute workdir")?;
        let out_file = std::path::absolute(out_file).context("absolute out_file")?;
        for p in [&workdir, &out_file] {
            if p.to_string_lossy().contains(['"', '\\']) {
                bail!(
                    "rsyslog paths must not contain quotes or backslashes: {}",
                    p.display()
                );
            }
        }
        let conf_path = workdir.join(format!("rsyslog-{first_port}.conf"));
        let pid_path = workdir.join(format!("rsyslog-{first_port}.pid"));
        if extras.relp_port.is_some() {
            // imrelp is packaged apart from rsyslog itself.
            let imrelp = Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so");
            if !imrelp.exists() {
                bail!(
                    "{} is missing: install rsyslog-relp (cargo xtask setup does)",
                    imrelp.display()
                );
            }
        }
        if let Some(tls) = &extras.tls {
            let driver = Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so");
            if !driver.exists() {
                bail!(
                    "{} is missing: install rsyslog-gnutls (cargo xtask setup does)",
                    driver.display()
                );
            }
            for f in [&tls.ca, &tls.cert, &tls.key] {
                if f.to_string_lossy().contains(['"', '\\']) || !f.is_absolute() {
                    bail!(
                        "TLS file paths must be absolute, without quotes: {}",
                        f.display()
                    );
                }
            }
        }
        if extras
            .main_queue
            .as_deref()
            .is_some_and(|q| q.contains(['(', ')']))
        {
            bail!("main_queue holds parameters only, no parentheses");
        }
        fs::write(
            &conf_path,
            config(&workdir, &out_file, addrs, ports, extras),
        )
        .with_context(|| format!("writing {}", conf_path.display()))?;
        match fs::remove_file(&pid_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing stale {}", pid_path.display()))
            }
        }
        let mut cmd = self.command(host, "rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(&pid_path);
        let proc = self.spawn_command(cmd)?;
        let tcp_only: Vec<u16> = extras
            .relp_port
            .into_iter()
            .chain(extras.tls.as_ref().map(|t| t.port))
            .collect();
        if let Err(e) = self.wait_listening(
            host,
            addrs,
            ports,
            &tcp_only,
            &proc,
            Duration::from_secs(10),
        ) {
            let _ = proc.stop();
            return Err(e.context(format!(
                "rsyslogd in {} did not come up; stderr:\n{}",
                self.ns(host),
                proc.stderr_tail(20)
            )));
        }
        Ok(proc)
    }

    /// Polls `ss` until every port has UDP and TCP listeners (`tcp_only`: TCP) on each of
    /// `addrs`, or on the v4 and v6 wildcard addresses when `addrs` is empty.
    pub(super) fn wait_listening(
        &self,
        host: Host,
        addrs: &[IpAddr],
        ports: &[u16],
        tcp_only: &[u16],
        proc: &Proc,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Each address as `ss -n` prints it, with the spellings it may use.
        let wanted: Vec<Vec<String>> = if addrs.is_empty() {
            vec![
                vec!["0.0.0.0".into(), "*".into()],
                vec!["[::]".into(), "*".into()],
            ]
        } else {
            addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(v4) => vec![v4.to_string()],
                    IpAddr::V6(v6) => vec![format!("[{v6}]")],
                })
                .collect()
        };
        let has = |listing: &str, port: u16, spellings: &[String]| {
            let suffix = format!(":{port}");
            listing.lines().any(|line| {
                line.split_whitespace()
                    .nth(3)
                    .and_then(|local| local.strip_suffix(suffix.as_str()))
                    .is_some_and(|addr| spellings.iter().any(|s| s == addr))
            })
        };
        loop {
            if let Some(status) = proc.try_wait()? {
                bail!("exited with {status}");
            }
            let udp = self.run(host, &["ss", "-H", "-l", "-n", "-u"])?;
            let tcp = self.run(host, &["ss", "-H", "-l", "-n", "-t"])?;
            let missing: Vec<String> = ports
                .iter()
                .flat_map(|&port| wanted.iter().map(move |w| (port, w)))
                .filter(|(port, w)| !(has(&udp, *port, w) && has(&tcp, *port, w)))
                .chain(
                    tcp_only
                        .iter()
                        .flat_map(|&port| wanted.iter().map(move |w| (port, w)))
                        .filter(|(port, w)| !has(&tcp, *port, w)),
                )
                .map(|(port, w)| format!("{}:{port}", w[0]))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on UDP and TCP at {} after {timeout:?}",
                    missing.join(", ")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The rsyslog config: one imudp and one imtcp input per (address, port), the RELP input per
/// address, all into one ruleset that writes the raw message.
fn config(
    workdir: &Path,
    out_file: &Path,
    addrs: &[IpAddr],
    ports: &[u16],
    extras: &RsyslogExtras,
) -> String {
    let mut inputs = String::new();
    let mut modules = String::from("module(load=\"imudp\")\nmodule(load=\"imtcp\")\n");
    if let Some(port) = extras.relp_port {
        modules += "module(load=\"imrelp\")\n";
        if addrs.is_empty() {
            inputs += &format!("input(type=\"imrelp\" port=\"{port}\" ruleset=\"ingest\")\n");
        }
        for addr in addrs {
            inputs += &format!(
                "input(type=\"imrelp\" address=\"{addr}\" port=\"{port}\" ruleset=\"ingest\")\n"
            );
        }
    }
    if let Some(tls) = &extras.tls {
        let params = tls.params();
        if addrs.is_empty() {
            inputs += &format!(
                "input(type=\"imtcp\" port=\"{}\" ruleset=\"ingest\" {params})\n",
                tls.port
            );
        }
        for addr in addrs {
            inputs += &format!(
                "input(type=\"imtcp\" address=\"{addr}\" port=\"{}\" ruleset=\"ingest\" {params})\n",
                tls.port
            );
        }
    }
    if let Some(q) = &extras.main_queue {
        modules += &format!("main_queue({q})\n");
    }
    for port in ports {
        if addrs.is_empty() {
            for kind in ["imudp", "imtcp"] {
                inputs += &format!("input(type=\"{kind}\" port=\"{port}\" ruleset=\"ingest\")\n");
            }
        }
        for addr in addrs {
            for kind in ["imudp", "imtcp"] {
                inputs += &format!(
                    "input(type=\"{kind}\" address=\"{addr}\" port=\"{port}\" ruleset=\"ingest\")\n"
                );
            }
        }
    }
    // Inputs bound to their own ruleset so rsyslog's internal messages never reach out_file.
    format!(
        r#"global(workDirectory="{workdir}" net.enableDNS="off")
{modules}template(name="switcher_raw" type="string" string="%rawmsg%\n")
ruleset(name="ingest") {{
    action(type="omfile" file="{out}" template="switcher_raw")
}}
{inputs}"#,
        workdir = workdir.display(),
        out = out_file.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_listens_everywhere_and_a_node_only_on_its_addresses() {
        let (w, o) = (Path::new("/w"), Path::new("/w/out.log"));
        let all = config(w, o, &[], &[1514], &RsyslogExtras::default());
        assert!(!all.contains("imrelp"), "{all}");
        assert!(all.contains("input(type=\"imudp\" port=\"1514\" ruleset=\"ingest\")"));
        assert!(all.contains("input(type=\"imtcp\" port=\"1514\" ruleset=\"ingest\")"));
        let addrs: Vec<IpAddr> = vec![
            "198.18.1.3".parse().expect("v4"),
            "2001:2:0:1::3".parse().expect("v6"),
        ];
        let relp = RsyslogExtras {
            relp_port: Some(2514),
            main_queue: Some("queue.size=\"50\"".into()),
            tls: Some(TlsInput {
                port: 6514,
                ca: "/c/ca.pem".into(),
                cert: "/c/s.pem".into(),
                key: "/c/s.key".into(),
            }),
        };
        let node = config(w, o, &addrs, &[514, 601], &relp);
        assert_eq!(node.matches("input(").count(), 12, "{node}");
        assert!(node.contains(
            "input(type=\"imtcp\" address=\"198.18.1.3\" port=\"6514\" ruleset=\"ingest\" \
             streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\" \
             streamDriver.CAFile=\"/c/ca.pem\" streamDriver.CertFile=\"/c/s.pem\" \
             streamDriver.KeyFile=\"/c/s.key\")"
        ));
        assert!(node.contains("module(load=\"imrelp\")"));
        assert!(node.contains(
            "input(type=\"imrelp\" address=\"198.18.1.3\" port=\"2514\" ruleset=\"ingest\")"
        ));
        assert!(node.contains("main_queue(queue.size=\"50\")"));
        assert!(node.contains(
            "input(type=\"imtcp\" address=\"2001:2:0:1::3\" port=\"601\" ruleset=\"ingest\")"
        ));
        assert!(
            !node.contains("input(type=\"imudp\" port="),
            "no wildcard input: {node}"
        );
    }
}
