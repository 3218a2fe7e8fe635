//! Small helpers shared by the subcommands.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where cargo puts its output: `CARGO_TARGET_DIR` (relative to the workspace) or `target/`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |d| root.join(d))
}

/// The command line as a shell user would type it, explicitly set variables first.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` capturing its output. `Ok(None)` if the program does not exist, `Ok(Some(out))`
/// with its stdout if it succeeded; fails with stderr when it exits non-zero.
pub fn output_if_present(cmd: &mut Command) -> Result<Option<String>> {
    let desc = describe(cmd);
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("starting `{desc}`")),
    };
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Like [`output_if_present`] but a missing program is an error naming what provides it.
pub fn output(cmd: &mut Command, provided_by: &str) -> Result<String> {
    let desc = describe(cmd);
    output_if_present(cmd)?
        .with_context(|| format!("`{desc}`: program not found (install {provided_by})"))
}

/// Runs `cmd` with inherited stdio (for long installs whose progress the user should see).
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let desc = describe(cmd);
    println!("  $ {desc}");
    let status = cmd.status().with_context(|| format!("starting `{desc}`"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}
