//! The one skip rule of the privileged tests (root: network namespaces, XDP, BPF maps).
//!
//! Every privileged test starts with `if !privileged() { return; }`:
//! - In CI (`CI` set to anything but empty, `0` or `false`, see [`in_ci`]) a test that cannot
//!   run panics: CI must never pass by skipping.
//! - Elsewhere the test is skipped, and the skip is made visible: a `SKIPPED` line is written
//!   straight to the process's stderr. libtest captures only what `print!`/`eprint!` write, so
//!   this line shows in the output of `cargo test` and `cargo xtask test` without
//!   `--nocapture`, next to the test's `... ok`. Each skip is also appended to the file
//!   [`skips_file`] names (`SWITCHER_SKIPS_FILE`, else `privileged-skips.txt` next to the test
//!   binaries, e.g. `target/debug/`), so a runner can print a summary at the end.

use std::ffi::OsStr;
use std::io::Write;
use std::panic::Location;
use std::path::PathBuf;

/// True when `CI` says this is a CI run: set, and not empty, `0` or `false` (any case).
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var_os("CI").as_deref())
}

fn ci_value_means_ci(value: Option<&OsStr>) -> bool {
    let Some(value) = value else {
        return false;
    };
    let value = value.to_string_lossy();
    let value = value.trim();
    !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
}

/// Why privileged tests cannot run here, or `None` when they can.
pub fn missing_privilege() -> Option<String> {
    if nix::unistd::geteuid().is_root() {
        None
    } else {
        Some(
            "needs root (network namespaces, XDP, BPF); run `cargo xtask test` as root".to_string(),
        )
    }
}

/// True when the calling privileged test may run. In CI a missing privilege panics; elsewhere
/// the skip is reported (see the module docs) and `false` returned.
#[track_caller]
pub fn privileged() -> bool {
    let Some(why) = missing_privilege() else {
        return true;
    };
    let at = Location::caller();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if in_ci() {
        panic!("privileged test {test} cannot run in CI ({at}): {why}");
    }
    let line = format!("SKIPPED {test} ({at}): {why}");
    notice(&line);
    record_skip(&line);
    false
}

/// Writes `line` straight to the process's stderr, past libtest's output capture, so it shows
/// whether or not the test passes and without `--nocapture`. For the few lines a person must
/// see: skips, waits for the lab lock, leftovers swept.
pub fn notice(line: &str) {
    let mut err = std::io::stderr().lock();
    // Nothing sensible to do if stderr is gone.
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Where skips are recorded: `SWITCHER_SKIPS_FILE`, else `privileged-skips.txt` in the folder
/// of the test binaries (target/<profile>/, not its deps/). `None` if that cannot be found.
pub fn skips_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHER_SKIPS_FILE") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Some(dir.join("privileged-skips.txt"))
}

fn record_skip(line: &str) {
    let Some(path) = skips_file() else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // One short O_APPEND write per line, so concurrent tests do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{binary}: {line}\n").as_bytes()));
    if let Err(e) = written {
        notice(&format!(
            "(could not record the skip in {}: {e})",
            path.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_a_value_other_than_empty_zero_or_false() {
        for (value, ci) in [
            (None, false),
            (Some(""), false),
            (Some(" "), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("FALSE"), false),
            (Some("False"), false),
            (Some("true"), true),
            (Some("1"), true),
            (Some("yes"), true),
            (Some("github"), true),
        ] {
            assert_eq!(ci_value_means_ci(value.map(OsStr::new)), ci, "CI={value:?}");
        }
    }
}
