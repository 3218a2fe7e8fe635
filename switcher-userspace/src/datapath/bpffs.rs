//! Making sure a BPF filesystem is mounted where the pins go.

use std::path::Path;

use anyhow::{Context as _, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf when `dir` lies under it and nothing is mounted there yet.
pub fn ensure_mounted(dir: &Path) -> Result<()> {
    if is_bpffs(Path::new(BPFFS_ROOT))? || !dir.starts_with(BPFFS_ROOT) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS_ROOT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS_ROOT} (are you root?)"))
}

fn is_bpffs(p: &Path) -> Result<bool> {
    match nix::sys::statfs::statfs(p) {
        // The field's integer type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => Ok(s.filesystem_type().0 as i64 == BPF_FS_MAGIC),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("statfs {}", p.display())),
    }
}
