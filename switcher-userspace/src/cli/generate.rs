//! `switcher generate` (hidden): shell completions and man pages generated from the command
//! line's own definition, so they can never disagree with it. The Debian package
//! (`cargo xtask package`) ships what this writes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Subcommand};
use clap_complete::Shell;

#[derive(Subcommand)]
pub(super) enum What {
    /// The completion script for SHELL, on stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// switcher.1 and a page per subcommand (switcher-status.1, switcher-fleet-status.1, ...),
    /// written into DIR.
    Man { dir: PathBuf },
}

pub(super) fn run(what: What) -> Result<()> {
    match what {
        What::Completions { shell } => {
            completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        What::Man { dir } => {
            for page in man(&dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

/// The command line as a user sees it: without hidden subcommands (this one), which the
/// completion generators would otherwise offer.
fn visible() -> clap::Command {
    let cli = super::Cli::command();
    let mut cmd = clap::Command::new("switcher")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cli.is_subcommand_required_set())
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cli.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// Writes the completion script for `shell` to `out`.
pub(super) fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut visible(), "switcher", out);
}

/// Writes the man pages into `dir` (created if missing); returns their paths.
fn man(dir: &Path) -> Result<Vec<PathBuf>> {
    fn page(cmd: clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            page(sub.clone(), dir, pages)?;
        }
        // Every page's footer names the release (clap_mangen would put the bare subcommand
        // name there: subcommands have no version of their own).
        let source = format!("switcher {}", env!("CARGO_PKG_VERSION"));
        pages.push(clap_mangen::Man::new(cmd).source(source).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built, so that subcommands carry their full names (switcher-fleet-status) and the global
    // options; without `help`, which would get a page of its own.
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    page(cmd, dir, &mut pages)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out);
        String::from_utf8(out).expect("UTF-8 script")
    }

    #[test]
    fn completions_offer_the_visible_subcommands_only() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            for sub in ["status", "deploy", "promote", "flows", "fleet", "socket"] {
                assert!(s.contains(sub), "{shell}: no {sub}");
            }
            assert!(
                !s.contains("generate"),
                "{shell} offers the hidden generate"
            );
        }
    }

    #[test]
    fn man_pages_cover_every_visible_subcommand() {
        let dir = std::env::temp_dir().join(format!("switcher-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pages = man(&dir).expect("man pages");
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for want in [
            "switcher.1",
            "switcher-status.1",
            "switcher-check.1",
            "switcher-fleet.1",
            "switcher-fleet-status.1",
        ] {
            assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let root = std::fs::read_to_string(dir.join("switcher.1")).expect("switcher.1");
        assert!(
            root.starts_with(".ie") || root.contains(".TH switcher 1"),
            "{root}"
        );
        assert!(root.contains("SWITCHER_SOCKET"), "{root}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
