//! Running the external tools the lab is built with (iproute2, ethtool, ...): one-shot commands
//! with their stderr in the error, and the check that a tool is installed.

use std::io::ErrorKind;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Checks that `program` can be started, naming the Debian package otherwise.
pub(super) fn require_tool(program: &str, version_arg: &str, package: &str) -> Result<()> {
    match Command::new(program)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "`{program}` not found: install the Debian package `{package}` (`cargo xtask setup` does)"
        ),
        Err(e) => Err(e).with_context(|| format!("running `{program} {version_arg}`")),
    }
}

pub(super) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion; on failure the error carries its stderr (or stdout).
pub fn run_command(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{desc}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        bail!("`{desc}` failed ({}): {detail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
