//! The Debian package that `cargo xtask package` builds, as an operator meets it: installed
//! with `dpkg -i`, every file where it belongs, the binary, the example config, the unit,
//! the completions and the man pages working; reinstalled over an edited conffile, which
//! stays; removed (the conffile stays, a datapath left pinned is detached) and purged, after
//! which nothing it installed is left, nor the daemon's state folder.
//!
//! Root only (dpkg), and never on a machine where a switcher package is installed already or
//! a daemon left its state in /var/lib/switcher: the test would replace or purge them. It
//! builds the package itself (a release build: minutes on a cold target folder).

mod support;

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use support::{output, privileged};
use switcher_tests::privilege::notice;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const STATE_DIR: &str = "/var/lib/switcher";
const CONFFILE: &str = "/etc/switcher/switcher.toml";
const UNIT: &str = "/lib/systemd/system/switcher.service";
/// Where the daemon pins its datapath by default (`switcher detach` removes it).
const BPFFS_DIR: &str = "/sys/fs/bpf/switcher";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace above tests/")
        .to_path_buf()
}

/// Runs `cmd`, which must succeed; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's state of the package: `installed`, `config-files`, ... or None when dpkg does not
/// know it.
fn package_state() -> Option<String> {
    let (ok, text) =
        output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", "switcher"]));
    ok.then(|| text.trim().to_string())
        .filter(|s| !s.is_empty() && s != "not-installed")
}

/// Purges the package when dropped, so a failed assertion leaves the machine as it was.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if package_state().is_some() {
            let (ok, text) = output(Command::new("dpkg").args(["--purge", "switcher"]));
            if !ok {
                notice(&format!(
                    "package test: dpkg --purge switcher failed:\n{text}"
                ));
            }
        }
    }
}

/// Removes a folder the test made when dropped (if the package did not).
struct RemoveOnDrop(&'static Path);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("eth0"));
        let _ = std::fs::remove_dir(self.0);
    }
}

/// `cargo xtask package`; the .deb it printed it built.
fn build_package() -> PathBuf {
    notice("package test: building the package (cargo xtask package, a release build)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let stdout = run(Command::new(cargo)
        .current_dir(workspace())
        .args(["run", "--quiet", "-p", "xtask", "--", "package"]));
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .unwrap_or_else(|| panic!("cargo xtask package printed no `built` line:\n{stdout}"));
    let deb = PathBuf::from(line.split(" (").next().expect("a path"));
    notice(&format!("package test: {line}"));
    deb
}

/// The package's paths (`/usr/bin/switcher`, `/usr/share/doc/switcher`, ...), from the .deb.
fn package_paths(deb: &Path) -> Vec<PathBuf> {
    run(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.strip_prefix('.'))
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn mode(path: &str) -> u32 {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} is not root's");
    meta.permissions().mode() & 0o7777
}

fn same_as_in_repo(installed: &str, repo: &str) {
    let a = std::fs::read(installed).unwrap_or_else(|e| panic!("{installed}: {e}"));
    let b = std::fs::read(workspace().join(repo)).unwrap_or_else(|e| panic!("{repo}: {e}"));
    assert!(a == b, "{installed} differs from {repo}");
}

/// What the clap-generated bash completion offers for `words` (the last one being completed).
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source /usr/share/bash-completion/completions/switcher\n\
         COMP_WORDS=({quoted})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE='{words}'\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _switcher switcher '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        quoted = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words = words.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    run(Command::new("bash").args(["--norc", "-c", &script]))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_package_installs_works_and_purges_without_a_trace() {
    if !privileged() {
        return;
    }
    if let Some(state) = package_state() {
        panic!(
            "a switcher package is on this machine already (dpkg state {state:?}): this test \
             installs and purges its own and will not replace it. Remove it first \
             (`dpkg --purge switcher`) if it can go."
        );
    }
    assert!(
        !Path::new(STATE_DIR).exists(),
        "{STATE_DIR} exists (a daemon's state): purging the package would delete it, so this \
         test does not run here. Move it away first if it can go."
    );

    let deb = build_package();
    let paths = package_paths(&deb);
    for want in [
        "/usr/bin/switcher",
        UNIT,
        CONFFILE,
        "/usr/share/bash-completion/completions/switcher",
        "/usr/share/zsh/vendor-completions/_switcher",
        "/usr/share/fish/vendor_completions.d/switcher.fish",
        "/usr/share/man/man1/switcher.1.gz",
        "/usr/share/man/man1/switcher-status.1.gz",
        "/usr/share/man/man1/switcher-fleet-status.1.gz",
        "/usr/share/doc/switcher/copyright",
        "/usr/share/doc/switcher/README.md.gz",
        "/usr/share/switcher/monitoring/switcher-alerts.yml",
        "/usr/share/switcher/monitoring/alerts_test.yml",
        "/usr/share/switcher/monitoring/grafana-switcher.json",
    ] {
        assert!(
            paths.contains(&PathBuf::from(want)),
            "the package lacks {want}"
        );
    }
    // Which of its paths the machine has without it (shared folders: /usr/bin, ...): after
    // the purge exactly these may remain.
    let before: BTreeSet<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();

    let _purge = PurgeOnDrop;
    let installed = run(Command::new("dpkg").arg("-i").arg(&deb));
    eprintln!("{installed}");
    assert_eq!(package_state().as_deref(), Some("installed"));
    assert_eq!(
        run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "switcher"])),
        VERSION
    );
    for p in &paths {
        assert!(p.exists(), "{} is not installed", p.display());
    }

    // Modes and contents.
    assert_eq!(mode("/usr/bin/switcher"), 0o755);
    for f in [CONFFILE, UNIT, "/usr/share/man/man1/switcher.1.gz"] {
        assert_eq!(mode(f), 0o644, "{f}");
    }
    assert_eq!(mode("/etc/switcher"), 0o755);
    same_as_in_repo(UNIT, "switcher-userspace/dist/switcher.service");
    same_as_in_repo(CONFFILE, "switcher-userspace/dist/switcher.toml");
    for f in [
        "switcher-alerts.yml",
        "alerts_test.yml",
        "grafana-switcher.json",
    ] {
        same_as_in_repo(
            &format!("/usr/share/switcher/monitoring/{f}"),
            &format!("switcher-userspace/dist/monitoring/{f}"),
        );
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "switcher"]));
    assert!(
        conffiles.trim_start().starts_with(&format!("{CONFFILE} ")),
        "conffiles: {conffiles:?}"
    );
    let copyright = std::fs::read_to_string("/usr/share/doc/switcher/copyright").expect("read");
    assert!(
        copyright.contains("License: MIT or Apache-2.0"),
        "{copyright}"
    );

    // The binary, on the installed example config.
    assert_eq!(
        run(Command::new("/usr/bin/switcher").arg("--version")).trim(),
        format!("switcher {VERSION}")
    );
    let check = run(Command::new("/usr/bin/switcher").args(["check", "--config", CONFFILE]));
    assert!(check.contains("config ok"), "{check}");

    // The unit as systemd reads it (offline: PID 1 here need not be systemd). It names the
    // installed binary and man page, which verify looks for.
    let (ok, verify) = output(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(
        ok && verify.trim().is_empty(),
        "systemd-analyze verify {UNIT}:\n{verify}"
    );

    // Completions: bash completes subcommands, nested subcommands and options.
    assert_eq!(bash_completes(&["switcher", "sta"]), ["status"]);
    assert_eq!(bash_completes(&["switcher", "fleet", "st"]), ["status"]);
    assert_eq!(bash_completes(&["switcher", "status", "--wa"]), ["--watch"]);
    let all = bash_completes(&["switcher", ""]);
    for sub in ["check", "deploy", "promote", "rollback", "flows", "detach"] {
        assert!(all.iter().any(|c| c == sub), "no {sub} in {all:?}");
    }
    for (shell, script) in [
        ("zsh", "/usr/share/zsh/vendor-completions/_switcher"),
        ("fish", "/usr/share/fish/vendor_completions.d/switcher.fish"),
    ] {
        // Syntax only, and only where the shell is installed.
        if let Ok(out) = Command::new(shell).args(["-n", script]).output() {
            assert!(
                out.status.success(),
                "{shell} -n {script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Man pages: found by name and rendered.
    assert_eq!(
        run(Command::new("man").args(["-w", "switcher-status"])).trim(),
        "/usr/share/man/man1/switcher-status.1.gz"
    );
    let page = run(Command::new("man")
        .args(["-l", "/usr/share/man/man1/switcher.1.gz"])
        .env("MANWIDTH", "100"));
    for want in [
        "NAME",
        "SYNOPSIS",
        "switcher-status(1)",
        "SWITCHER_SOCKET",
        VERSION,
    ] {
        assert!(page.contains(want), "no {want} in man switcher:\n{page}");
    }

    // Reinstalling (the upgrade path of the maintainer scripts) keeps an edited conffile.
    let edited = format!(
        "{}\n# edited by the package test\n",
        std::fs::read_to_string(CONFFILE).expect("read the conffile")
    );
    std::fs::write(CONFFILE, &edited).expect("edit the conffile");
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(
        std::fs::read_to_string(CONFFILE).expect("read the conffile"),
        edited
    );

    // Removal keeps the conffile; the purge takes it and the daemon's state folder. Removal
    // also detaches the datapath a stopped daemon leaves pinned (--keep-attached): here an
    // empty pin folder stands for it, where the machine has none of its own.
    std::fs::create_dir_all(STATE_DIR).expect("create the state folder");
    std::fs::write(Path::new(STATE_DIR).join("state.json"), "{}").expect("write state");
    let pins = Path::new(BPFFS_DIR);
    let made_pins = (!pins.exists()).then(|| {
        std::fs::create_dir_all(pins.join("eth0")).expect("create a pin folder in bpffs");
        RemoveOnDrop(pins)
    });
    let removed = run(Command::new("dpkg").args(["--remove", "switcher"]));
    eprintln!("{removed}");
    if made_pins.is_some() {
        assert!(
            !pins.exists(),
            "removal left the pinned datapath {BPFFS_DIR}"
        );
    } else {
        notice(&format!(
            "package test: {BPFFS_DIR} exists on this machine: detaching on removal not checked"
        ));
    }
    assert_eq!(package_state().as_deref(), Some("config-files"));
    assert!(!Path::new("/usr/bin/switcher").exists());
    assert!(Path::new(CONFFILE).exists(), "removal took the conffile");
    assert!(
        Path::new(STATE_DIR).exists(),
        "removal took the state folder"
    );
    run(Command::new("dpkg").args(["--purge", "switcher"]));
    assert_eq!(package_state(), None);
    let (known, status) = output(Command::new("dpkg").args(["-s", "switcher"]));
    assert!(
        !known || status.contains("Status: deinstall ok not-installed"),
        "dpkg -s switcher after the purge:\n{status}"
    );
    let left: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| p.exists() && !before.contains(p))
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    assert!(!Path::new(STATE_DIR).exists(), "the purge left {STATE_DIR}");
}
