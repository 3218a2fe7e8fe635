//! rsyslog in the lab: [`Lab::start_rsyslog`] writes a config for a real `rsyslogd` (imudp and
//! imtcp into one raw-message file), starts it in a namespace and waits until it listens.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::command::require_tool;
use super::{Host, Lab, Proc};

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
        require_tool("rsyslogd", "-v", "rsyslog")?;
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
        let conf_path = workdir.join(format!("rsyslog-{port}.conf"));
        let pid_path = workdir.join(format!("rsyslog-{port}.pid"));
        // Inputs bound to their own ruleset so rsyslog's internal messages never reach out_file.
        let conf = format!(
            r#"global(workDirectory="{workdir}" net.enableDNS="off")
module(load="imudp")
module(load="imtcp")
template(name="switcher_raw" type="string" string="%rawmsg%\n")
ruleset(name="ingest") {{
    action(type="omfile" file="{out}" template="switcher_raw")
}}
input(type="imudp" port="{port}" ruleset="ingest")
input(type="imtcp" port="{port}" ruleset="ingest")
"#,
            workdir = workdir.display(),
            out = out_file.display(),
        );
        fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
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
        if let Err(e) = self.wait_listening(host, port, &proc, Duration::from_secs(10)) {
            let _ = proc.stop();
            return Err(e.context(format!(
                "rsyslogd in {} did not come up; stderr:\n{}",
                self.ns(host),
                proc.stderr_tail(20)
            )));
        }
        Ok(proc)
    }

    /// Polls `ss` until `port` has UDP and TCP listeners on the v4 and v6 wildcard addresses.
    fn wait_listening(&self, host: Host, port: u16, proc: &Proc, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let suffix = format!(":{port}");
        let has = |listing: &str, wildcards: &[&str]| {
            listing.lines().any(|line| {
                line.split_whitespace()
                    .nth(3)
                    .and_then(|local| local.strip_suffix(suffix.as_str()))
                    .is_some_and(|addr| wildcards.contains(&addr))
            })
        };
        loop {
            if let Some(status) = proc.try_wait()? {
                bail!("exited with {status}");
            }
            let udp = self.run(host, &["ss", "-H", "-l", "-n", "-u"])?;
            let tcp = self.run(host, &["ss", "-H", "-l", "-n", "-t"])?;
            let v4 = ["0.0.0.0", "*"];
            let v6 = ["[::]", "*"];
            if has(&udp, &v4) && has(&udp, &v6) && has(&tcp, &v4) && has(&tcp, &v6) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nothing listens on UDP and TCP port {port} (v4 and v6) after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}
