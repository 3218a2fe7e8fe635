//! The daemon's runtime folders (the API socket's, the datapath locks'): only root may reach
//! what it puts there.

use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use tracing::info;

/// Creates `dir` and its missing parents with mode 0700; an existing folder is left as it is.
pub fn create(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Makes `dir` private to the daemon: created 0700 when missing. An existing one must belong
/// to the daemon's user (root): whoever owns it could replace what the daemon puts there.
/// It is set to 0700 when it holds nothing but the daemon's own files (`ours`), like the
/// /run/switcher that systemd's `RuntimeDirectory=` makes 0755; a folder shared with other
/// files (a work folder, /run itself) keeps its mode, and what the daemon puts there is
/// root-only by its own mode.
pub fn prepare(dir: &Path, ours: impl Fn(&OsStr) -> bool) -> Result<()> {
    create(dir)?;
    let meta = fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "{} belongs to uid {}, not to this daemon's user (uid {me}): whoever owns it \
             could replace the daemon's socket or locks; give it to root or choose another folder",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode == 0o700 {
        return Ok(());
    }
    let mut entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let only_ours = entries.all(|e| e.is_ok_and(|e| ours(&e.file_name())));
    if only_ours {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
        info!(dir = %dir.display(), "runtime folder was mode {mode:o}: set to 0700");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn a_folder_of_its_own_becomes_0700_a_shared_one_keeps_its_mode() {
        let base = std::env::temp_dir().join(format!("switcher-pdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let own = base.join("run");
        // Missing: created 0700.
        prepare(&own, |_| false).expect("created");
        assert_eq!(mode(&own), 0o700);
        // Existing 0755 with only the daemon's files (systemd's RuntimeDirectory=): 0700.
        fs::set_permissions(&own, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(own.join("x.lock"), "").expect("lock file");
        prepare(&own, |n| n == "x.lock").expect("prepared");
        assert_eq!(mode(&own), 0o700);
        // Someone else's files in it: not the daemon's folder, its mode stays.
        let shared = base.join("shared");
        fs::create_dir_all(&shared).expect("shared");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(shared.join("notes.txt"), "").expect("file");
        prepare(&shared, |n| n == "x.lock").expect("prepared");
        assert_eq!(mode(&shared), 0o755);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a folder away; the check itself is the uid comparison.
            return;
        }
        let dir =
            std::env::temp_dir().join(format!("switcher-pdir-foreign-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        std::os::unix::fs::chown(&dir, Some(65534), None).expect("chown nobody");
        let e = prepare(&dir, |_| true).expect_err("refused");
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
