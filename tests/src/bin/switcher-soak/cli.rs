//! The real `switcher` CLI against the rig's daemon socket, bounded in time, and the few
//! things the soak reads from `status --json` and `history --json` (as JSON values, so the
//! soak depends on the documents' field names only).

use std::{
    collections::BTreeMap,
    io::Read,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use switcher::domain::Color;
use switcher_tests::rig::{self, Rig};

/// A CLI call that takes longer is killed and fails (promote --wait validates within
/// seconds here).
pub const TIMEOUT: Duration = Duration::from_secs(90);

pub struct Reply {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    /// The error the CLI printed, on one line, at most 400 characters (a panic's backtrace
    /// would drown the report).
    pub fn error(&self) -> String {
        // Under --json the CLI prints its error as a JSON object on stdout.
        let json = serde_json::from_str::<Value>(self.stdout.trim())
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        let e = json.unwrap_or_else(|| self.stderr.trim().to_owned());
        let e = e.strip_prefix("error: ").unwrap_or(&e).replace('\n', " / ");
        if e.chars().count() > 400 {
            format!("{}...", e.chars().take(400).collect::<String>())
        } else {
            e
        }
    }
}

/// `switcher --socket SOCKET ARGS`.
pub fn run(rig: &Rig, args: &[&str]) -> Result<Reply> {
    let mut child = Command::new(rig::bin("switcher")?)
        .arg("--socket")
        .arg(&rig.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the switcher CLI")?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for the switcher CLI")? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`switcher {}` took over {TIMEOUT:?}", args.join(" "));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let join = |h: thread::JoinHandle<String>| h.join().unwrap_or_default();
    Ok(Reply {
        ok: status.success(),
        stdout: join(out),
        stderr: join(err),
    })
}

/// `switcher ARGS --json`, which must succeed, as a JSON value.
pub fn json(rig: &Rig, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let r = run(rig, &all)?;
    if !r.ok {
        bail!("`switcher {}` failed: {}", all.join(" "), r.error());
    }
    serde_json::from_str(&r.stdout)
        .with_context(|| format!("`switcher {}` printed no JSON: {}", all.join(" "), r.stdout))
}

/// `status --json`'s services by name.
pub fn services(rig: &Rig) -> Result<BTreeMap<String, Value>> {
    let v = json(rig, &["status"])?;
    let list = v["services"]
        .as_array()
        .with_context(|| format!("no services in the status: {v}"))?;
    Ok(list
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s.clone())))
        .collect())
}

pub fn color_of(service: &Value) -> Result<Color> {
    let c = service["active"]
        .as_str()
        .with_context(|| format!("no active colour in {service}"))?;
    c.parse().map_err(|e: String| anyhow::anyhow!(e))
}

/// The active colour of every service.
pub fn actives(rig: &Rig) -> Result<BTreeMap<String, Color>> {
    services(rig)?
        .into_iter()
        .map(|(n, s)| Ok((n, color_of(&s)?)))
        .collect()
}

pub fn active(rig: &Rig, service: &str) -> Result<Color> {
    actives(rig)?
        .remove(service)
        .with_context(|| format!("{service} is not in the status"))
}

/// A counter of one colour of a service in the status (`packets`, `new_flows`, ...).
pub fn counter(service: &Value, color: Color, name: &str) -> u64 {
    service[color.to_string()][name].as_u64().unwrap_or(0)
}

/// The last deployment of `service`: (phase, reason of its last transition).
pub fn last_deployment(rig: &Rig, service: &str) -> Result<Option<(String, String)>> {
    let v = json(rig, &["history", service])?;
    let Some(d) = v.as_array().and_then(|a| a.last()) else {
        return Ok(None);
    };
    let phase = d["phase"].as_str().unwrap_or("?").to_string();
    let reason = d["transitions"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|t| t["reason"].as_str())
        .unwrap_or("")
        .to_string();
    Ok(Some((phase, reason)))
}
