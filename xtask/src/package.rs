//! `cargo xtask package`: the Debian package, built with plain `dpkg-deb` from a staged tree
//! (no packaging tool to install).
//!
//! What it ships (paths on the installed host):
//! - `/usr/bin/switcher`, the release binary, stripped as dh_strip would;
//! - `/lib/systemd/system/switcher.service` (switcher-userspace/dist), neither enabled nor
//!   started by the installation: the example config must be edited first;
//! - `/etc/switcher/switcher.toml`, the example config, a conffile;
//! - bash, zsh and fish completions and the man pages (switcher(1), switcher-status(1), ...),
//!   generated from the CLI definition by the binary itself (`switcher generate`);
//! - the monitoring kit (alert rules, their promtool tests, the Grafana dashboard) in
//!   `/usr/share/switcher/monitoring/`, and the README and copyright in
//!   `/usr/share/doc/switcher/`.
//!
//! The maintainer scripts work with or without systemd as PID 1 (containers, chroots): they
//! call `systemctl` only when `/run/systemd/system` exists. See [`POSTINST`], [`PRERM`] and
//! [`POSTRM`] for what each does.
//!
//! Output: `target/debian/switcher_<version>_<arch>.deb`.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::setup;
use crate::util::{output, output_if_present, run_visible, target_dir, workspace_root};

/// The version every crate of the workspace shares (xtask's own is the workspace's).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const LICENSE: &str = env!("CARGO_PKG_LICENSE");
const MAINTAINER: &str = "switcher developers <switcher@localhost>";

/// Paths inside the package (and so on the installed host).
const BIN: &str = "usr/bin/switcher";
const UNIT: &str = "lib/systemd/system/switcher.service";
const CONFIG: &str = "etc/switcher/switcher.toml";
const BASH: &str = "usr/share/bash-completion/completions/switcher";
const ZSH: &str = "usr/share/zsh/vendor-completions/_switcher";
const FISH: &str = "usr/share/fish/vendor_completions.d/switcher.fish";
const MAN1: &str = "usr/share/man/man1";
const DOC: &str = "usr/share/doc/switcher";
const MONITORING: &str = "usr/share/switcher/monitoring";

pub fn run() -> Result<()> {
    setup::for_package()?;
    crate::run::cargo(&["build", "--release", "-p", "switcher-userspace"])?;
    let deb = build_deb(&target_dir().join("release/switcher"))?;
    let size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    println!("built {} ({} KiB)", deb.display(), size.div_ceil(1024));
    Ok(())
}

/// Stages the package around `binary` and builds it; returns the .deb's path.
fn build_deb(binary: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let dist = root.join("switcher-userspace/dist");
    let arch = output(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg (Debian-based systems only)",
    )?
    .trim()
    .to_string();
    let reported = output(Command::new(binary).arg("--version"), "the release build")?;
    ensure!(
        reported.trim() == format!("switcher {VERSION}"),
        "{} reports {:?}, the workspace is at {VERSION}",
        binary.display(),
        reported.trim()
    );

    let out_dir = target_dir().join("debian");
    let name = format!("switcher_{VERSION}_{arch}");
    let stage = out_dir.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    println!("staging {}", stage.display());

    // The binary, stripped of debug info and symbols as dh_strip does (panic messages keep
    // their file:line; only RUST_BACKTRACE frames lose their names).
    let bin = stage.join(BIN);
    copy(binary, &bin)?;
    output(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(&bin),
        "binutils",
    )?;
    copy(&dist.join("switcher.service"), &stage.join(UNIT))?;
    copy(&dist.join("switcher.toml"), &stage.join(CONFIG))?;

    // Completions and man pages: the binary generates them from its own clap definition.
    for (shell, path) in [("bash", BASH), ("zsh", ZSH), ("fish", FISH)] {
        let script = output(
            Command::new(&bin).args(["generate", "completions", shell]),
            "the release build",
        )?;
        write(&stage.join(path), script.as_bytes())?;
    }
    let man_tmp = out_dir.join(format!("{name}.man"));
    let _ = fs::remove_dir_all(&man_tmp);
    output(
        Command::new(&bin).args(["generate", "man"]).arg(&man_tmp),
        "the release build",
    )?;
    let mut pages = Vec::new();
    for e in fs::read_dir(&man_tmp).with_context(|| format!("listing {}", man_tmp.display()))? {
        let page = e?.path();
        let file = page.file_name().context("a man page without a name")?;
        let dest = stage.join(MAN1).join(file).with_extension("1.gz");
        write(&dest, &gzip(&page)?)?;
        pages.push(dest);
    }
    fs::remove_dir_all(&man_tmp).with_context(|| format!("removing {}", man_tmp.display()))?;
    ensure!(
        pages.iter().any(|p| p.ends_with("switcher.1.gz")),
        "`switcher generate man` wrote no switcher.1"
    );

    // The monitoring kit, as it is in the repository.
    let kit = dist.join("monitoring");
    for e in fs::read_dir(&kit).with_context(|| format!("listing {}", kit.display()))? {
        let file = e?.path();
        if file.is_file() {
            let name = file.file_name().context("a kit file without a name")?;
            copy(&file, &stage.join(MONITORING).join(name))?;
        }
    }
    // Docs, compressed as Debian policy asks of anything but the copyright file.
    write(
        &stage.join(DOC).join("README.md.gz"),
        &gzip(&root.join("README.md"))?,
    )?;
    write(&stage.join(DOC).join("copyright"), copyright().as_bytes())?;

    // DEBIAN/: control data. Installed-Size and Depends are measured on the staged tree.
    let depends = depends(&bin, &out_dir.join(format!("{name}.shlibdeps")))?;
    let size = installed_size_kib(&stage)?;
    let debian = stage.join("DEBIAN");
    write(
        &debian.join("control"),
        control(&arch, size, &depends).as_bytes(),
    )?;
    write(&debian.join("conffiles"), format!("/{CONFIG}\n").as_bytes())?;
    for (script, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write(&debian.join(script), text.as_bytes())?;
    }
    set_modes(&stage)?;

    let deb = out_dir.join(format!("{name}.deb"));
    let mut c = Command::new("dpkg-deb");
    c.args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb);
    run_visible(&mut c)?;
    lintian(&deb)?;
    Ok(deb)
}

/// dpkg-deb takes modes as they are: 0755 for folders, the binary and the maintainer
/// scripts, 0644 for everything else (whatever the umask or the source files' modes).
fn set_modes(stage: &Path) -> Result<()> {
    fn walk(dir: &Path, stage: &Path) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = e?.path();
            let rel = path.strip_prefix(stage)?;
            let ty = fs::symlink_metadata(&path)?.file_type();
            let mode = if ty.is_dir() {
                walk(&path, stage)?;
                0o755
            } else if rel == Path::new(BIN)
                || rel.parent() == Some(Path::new("DEBIAN"))
                    && ["postinst", "prerm", "postrm"]
                        .iter()
                        .any(|s| rel.ends_with(s))
            {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        Ok(())
    }
    fs::set_permissions(stage, fs::Permissions::from_mode(0o755))?;
    walk(stage, stage)
}

/// `Installed-Size` as dpkg-gencontrol counts it: KiB per file rounded up, one per folder.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                if e.file_name() == "DEBIAN" {
                    continue;
                }
                *total += 1;
                walk(&e.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

/// The `Depends` line: dpkg-shlibdeps where dpkg-dev is installed (it knows every library's
/// package and symbol versions), else the C library at the newest GLIBC_ symbol version the
/// binary uses, which is all a Rust binary links dynamically besides libgcc_s.
fn depends(bin: &Path, work: &Path) -> Result<String> {
    if let Some(deps) = shlibdeps(bin, work)? {
        return Ok(deps);
    }
    let needed = output(Command::new("objdump").arg("-p").arg(bin), "binutils")?;
    let symbols = output(Command::new("objdump").arg("-T").arg(bin), "binutils")?;
    depends_from_objdump(&needed, &symbols)
}

/// `dpkg-shlibdeps -O`'s `shlibs:Depends`, or None when dpkg-dev is not installed.
fn shlibdeps(bin: &Path, dir: &Path) -> Result<Option<String>> {
    // It wants to run in a source tree: an empty debian/control in `dir` is enough.
    let _ = fs::remove_dir_all(dir);
    write(&dir.join("debian/control"), b"")?;
    let out = output_if_present(
        Command::new("dpkg-shlibdeps")
            .current_dir(dir)
            .arg("-O")
            .arg(bin),
    );
    let _ = fs::remove_dir_all(dir);
    let Some(out) = out? else {
        return Ok(None);
    };
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))?;
    Ok(Some(deps.trim().to_string()))
}

/// The fallback of [`depends`], from `objdump -p` (NEEDED) and `objdump -T` (symbol
/// versions). Fails on a library it cannot name the package of.
fn depends_from_objdump(needed: &str, symbols: &str) -> Result<String> {
    let mut libc = false;
    let mut gcc = false;
    for lib in needed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
    {
        match lib {
            "libc.so.6"
            | "libm.so.6"
            | "libpthread.so.0"
            | "libdl.so.2"
            | "librt.so.1"
            | "ld-linux-x86-64.so.2"
            | "ld-linux-aarch64.so.1" => libc = true,
            "libgcc_s.so.1" => gcc = true,
            other => bail!("the binary links {other}: name its package in xtask/src/package.rs"),
        }
    }
    let newest = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            v.split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<_>, _>>()
                .ok()
        })
        .max();
    let mut deps = Vec::new();
    if libc {
        deps.push(match newest {
            Some(v) => format!(
                "libc6 (>= {})",
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
            ),
            None => "libc6".to_string(),
        });
    }
    if gcc {
        deps.push("libgcc-s1 (>= 4.2)".to_string());
    }
    Ok(deps.join(", "))
}

fn control(arch: &str, installed_size: u64, depends: &str) -> String {
    let mut c = format!(
        "Package: switcher\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_size}\n"
    );
    if !depends.is_empty() {
        c.push_str(&format!("Depends: {depends}\n"));
    }
    c.push_str(
        "Suggests: prometheus, bpftool\n\
         Section: net\n\
         Priority: optional\n\
         Description: zero-downtime blue/green switching of log-ingest services (XDP)\n \
         An XDP program on the edge host sends every log packet addressed to a\n \
         service (VIP:port: syslog over UDP, TCP or RELP, GELF, ...) to its blue or\n \
         its green backends; a flip is one map write that the very next packet\n \
         sees. Established TCP connections stay on the colour they started on. The\n \
         daemon deploys a new version to the idle colour, validates it (health,\n \
         load, metrics), promotes it, watches it and rolls back; the switcher\n \
         command drives it.\n \
         .\n \
         The unit is installed neither enabled nor started: edit\n \
         /etc/switcher/switcher.toml, check it with `switcher check`, then\n \
         `systemctl enable --now switcher`. Prometheus alert rules and a Grafana\n \
         dashboard are in /usr/share/switcher/monitoring.\n",
    );
    c
}

fn copyright() -> String {
    let license = LICENSE.replace(" OR ", " or ");
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: switcher\n\
         \n\
         Files: *\n\
         Copyright: the switcher developers\n\
         License: {license}\n\
         \n\
         License: MIT\n \
         Permission is hereby granted, free of charge, to any person obtaining a copy of\n \
         this software and associated documentation files (the \"Software\"), to deal in\n \
         the Software without restriction, including without limitation the rights to\n \
         use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of\n \
         the Software, and to permit persons to whom the Software is furnished to do so,\n \
         subject to the following conditions:\n \
         .\n \
         The above copyright notice and this permission notice shall be included in all\n \
         copies or substantial portions of the Software.\n \
         .\n \
         THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n \
         IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS\n \
         FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR\n \
         COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN\n \
         AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION\n \
         WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.\n\
         \n\
         License: Apache-2.0\n \
         On Debian systems the full text of the Apache License, Version 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n"
    )
}

/// After unpacking. On a fresh install: tell what to do (nothing is enabled or started).
/// On an upgrade: restart the daemon if it runs, so the new binary serves; the restart is
/// hitless (the unit runs it with --keep-attached: the new daemon adopts the pinned datapath;
/// an upgrade that changes the map layout is refused by the new daemon, see README). When a
/// removal is aborted (prerm stopped the daemon), an enabled daemon is started again.
const POSTINST: &str = r#"#!/bin/sh
set -e

if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        if [ -n "$2" ]; then
            # Upgrade: hitless (--keep-attached), and only if it was running.
            systemctl try-restart switcher.service || true
        fi
    fi
    if [ -z "$2" ]; then
        echo "switcher: edit /etc/switcher/switcher.toml, check it with" \
            "'switcher check --config /etc/switcher/switcher.toml'," \
            "then 'systemctl enable --now switcher'."
    fi
fi
if [ "$1" = abort-remove ] || [ "$1" = abort-deconfigure ]; then
    if [ -d /run/systemd/system ] && systemctl is-enabled --quiet switcher.service; then
        systemctl start switcher.service || true
    fi
fi

exit 0
"#;

/// Before removal (not before an upgrade, which keeps the daemon running until postinst
/// restarts it): stop the daemon, then remove the datapath it leaves attached and pinned
/// (--keep-attached), where the config says it is: without the binary nothing could remove
/// it any more, and the VIPs would stay switched by programs no daemon updates. If that
/// fails (a daemon still running outside systemd), the removal stops, saying why.
const PRERM: &str = r#"#!/bin/sh
set -e

if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop switcher.service || true
    fi
    if [ -f /etc/switcher/switcher.toml ] &&
        /usr/bin/switcher check --config /etc/switcher/switcher.toml >/dev/null 2>&1; then
        set -- --config /etc/switcher/switcher.toml
    else
        set --
    fi
    if ! /usr/bin/switcher detach "$@"; then
        echo "switcher: the datapath is still attached (is a daemon still running?);" \
            "stop it, then remove the package again." >&2
        exit 1
    fi
fi

exit 0
"#;

/// After removal: systemd forgets the unit. On purge, also the daemon's state (deployments,
/// the dashboard token) in /var/lib/switcher and the unit's enablement link; dpkg itself
/// removes the conffile.
const POSTRM: &str = r#"#!/bin/sh
set -e

if [ "$1" = purge ]; then
    rm -rf /var/lib/switcher
    rm -f /etc/systemd/system/multi-user.target.wants/switcher.service
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi

exit 0
"#;

/// lintian's verdict when it is installed (it is not installed for this).
fn lintian(deb: &Path) -> Result<()> {
    match Command::new("lintian").arg(deb).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            println!("lintian:\n{}", text.trim_end());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("(lintian not installed: not run)");
        }
        Err(e) => return Err(e).context("running lintian"),
    }
    Ok(())
}

fn gzip(file: &Path) -> Result<Vec<u8>> {
    // -n: no name or timestamp in the header, so the same input gives the same bytes.
    let out = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(file)
        .output()
        .context("running gzip")?;
    ensure!(
        out.status.success(),
        "gzip {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(to: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, data).with_context(|| format!("writing {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_names_the_newest_glibc_symbol_version() {
        let needed = "
Dynamic Section:
  NEEDED               libgcc_s.so.1
  NEEDED               libm.so.6
  NEEDED               libc.so.6
  NEEDED               ld-linux-x86-64.so.2
";
        let symbols = "\
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.2.5) write
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.34) __libc_start_main
0000000000000000  w   DF *UND*\t0000000000000000  GLIBC_2.28  statx
0000000000000000      DF *UND*\t0000000000000000 (GCC_3.0)    _Unwind_Resume
";
        assert_eq!(
            depends_from_objdump(needed, symbols).expect("known libraries"),
            "libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
        );
        assert!(depends_from_objdump("  NEEDED libssl.so.3\n", "").is_err());
    }

    #[test]
    fn control_is_a_valid_stanza() {
        let c = control("amd64", 1234, "libc6 (>= 2.34)");
        assert!(c.ends_with('\n') && !c.contains("\n\n"), "{c}");
        for field in [
            "Package: switcher\n",
            &format!("Version: {VERSION}\n"),
            "Architecture: amd64\n",
            "Installed-Size: 1234\n",
            "Depends: libc6 (>= 2.34)\n",
            "Section: net\n",
        ] {
            assert!(c.contains(field), "no {field:?} in {c}");
        }
        // Continuation lines start with a space; the synopsis is short.
        let mut lines = c.lines().skip_while(|l| !l.starts_with("Description:"));
        assert!(lines.next().expect("Description").len() <= 80);
        for l in lines {
            assert!(l.starts_with(' ') && l.len() <= 80, "{l:?}");
        }
    }

    #[test]
    fn maintainer_scripts_call_systemctl_only_under_systemd() {
        for script in [POSTINST, PRERM, POSTRM] {
            assert!(script.starts_with("#!/bin/sh\nset -e\n"));
            let syntax = Command::new("sh")
                .args(["-n", "-c", script])
                .status()
                .expect("sh");
            assert!(syntax.success(), "sh -n refuses:\n{script}");
            let mut under_systemd = 0;
            for l in script.lines() {
                if l.contains("[ -d /run/systemd/system ]") {
                    under_systemd += 1;
                }
                if l.trim_start().starts_with("systemctl") {
                    assert!(under_systemd > 0, "unguarded: {l}");
                }
            }
        }
    }
}
