//! A throwaway PKI for TLS in the lab, made with the `openssl` command: a CA and one server
//! certificate (P-256) for a name, valid two days. Collectors present the server certificate;
//! clients verify it against the CA and the name, end to end through the switch.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::command::require_tool;
use super::TlsInput;

/// PEM files of the lab's CA and a server certificate.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the server certificate is for (its CN and only subjectAltName).
    pub name: String,
}

impl Certs {
    /// Makes a CA and a certificate for `name` (a DNS name) in `dir`.
    pub fn make(dir: &Path, name: &str) -> Result<Certs> {
        require_tool("openssl", "version", "openssl")?;
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            bail!("{name:?} is not a plain DNS name");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::path::absolute(dir).context("absolute cert dir")?;
        let f = |n: &str| dir.join(n);
        let ext = f("server.ext");
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"),
        )
        .with_context(|| format!("writing {}", ext.display()))?;
        let p = |p: &PathBuf| p.display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=switcher lab CA"],
            ]
            .concat(),
            &[("-keyout", p(&f("ca.key"))), ("-out", p(&f("ca.pem")))],
        )?;
        openssl(
            &[&["req"][..], &ec, &["-subj", &format!("/CN={name}")]].concat(),
            &[
                ("-keyout", p(&f("server.key"))),
                ("-out", p(&f("server.csr"))),
            ],
        )?;
        openssl(
            &["x509", "-req", "-days", "2", "-set_serial", "2"],
            &[
                ("-in", p(&f("server.csr"))),
                ("-CA", p(&f("ca.pem"))),
                ("-CAkey", p(&f("ca.key"))),
                ("-extfile", p(&ext)),
                ("-out", p(&f("server.pem"))),
            ],
        )?;
        Ok(Certs {
            ca: f("ca.pem"),
            cert: f("server.pem"),
            key: f("server.key"),
            name: name.to_owned(),
        })
    }

    /// A TLS syslog input on `port` presenting this certificate.
    pub fn input(&self, port: u16) -> TlsInput {
        TlsInput {
            port,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

fn openssl(args: &[&str], files: &[(&str, String)]) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    for (flag, path) in files {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
