//! Service definitions as the fleet carries them: the TOML of one `[[service]]` table, as a
//! host's config file has it. A host runs its file's daemon settings with the fleet's
//! definitions laid over its file's services (the overlay), kept in its state folder so a
//! restart without etcd still runs what the fleet last agreed on.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::config::Config;

/// The config a fleet host starts with: its file with the fleet's definitions it applied
/// last laid over it, so a restart without etcd runs what the fleet last agreed on. The file
/// alone when there are none, or when they no longer fit the file (said, not fatal).
pub fn startup_config(path: &Path, state_dir: &Path, file: Config) -> Config {
    let overlay = match load_overlay(state_dir) {
        Ok(o) if !o.is_empty() => o,
        Ok(_) => return file,
        Err(e) => {
            tracing::warn!("fleet: ignoring the saved definitions: {e:#}");
            return file;
        }
    };
    let composed = read_file(path).and_then(|text| compose(&text, &overlay));
    match composed {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("fleet: the saved definitions do not fit the config file, starting from the file: {e:#}");
            file
        }
    }
}

/// Where a host keeps the fleet's definitions it applied.
pub fn overlay_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet-services.json")
}

/// The config file's text.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Each service of the config file at `path`, by name, as TOML text.
pub fn file_services(path: &Path) -> Result<BTreeMap<String, String>> {
    services_of(&read_file(path)?)
}

/// Each service of a config file's `text`, by name, as TOML text.
pub fn services_of(text: &str) -> Result<BTreeMap<String, String>> {
    let table: toml::Table = toml::from_str(text).context("parsing the config file")?;
    let mut out = BTreeMap::new();
    for s in services(&table)? {
        let name = s
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| anyhow!("a [[service]] of the config file has no name"))?;
        out.insert(name.to_string(), toml::to_string(s)?);
    }
    Ok(out)
}

fn services(table: &toml::Table) -> Result<Vec<&toml::Table>> {
    match table.get("service") {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_table()
                    .ok_or_else(|| anyhow!("[[service]] entries must be tables"))
            })
            .collect(),
        Some(_) => bail!("`service` must be an array of tables ([[service]])"),
    }
}

/// The config file's `text` with `overlay`'s definitions in place of (or added to) its
/// services of the same name, validated whole.
pub fn compose(text: &str, overlay: &BTreeMap<String, String>) -> Result<Config> {
    let mut table: toml::Table = toml::from_str(text).context("parsing the config file")?;
    let mut list: Vec<toml::Value> = services(&table)?
        .into_iter()
        .cloned()
        .map(toml::Value::Table)
        .collect();
    for (name, def) in overlay {
        let t: toml::Table = toml::from_str(def)
            .with_context(|| format!("the fleet's definition of {name} is not TOML"))?;
        if t.get("name").and_then(|n| n.as_str()) != Some(name.as_str()) {
            bail!("the fleet's definition of {name} names another service");
        }
        let slot = list
            .iter_mut()
            .find(|v| v.get("name").and_then(|n| n.as_str()) == Some(name.as_str()));
        match slot {
            Some(v) => *v = toml::Value::Table(t),
            None => list.push(toml::Value::Table(t)),
        }
    }
    table.insert("service".into(), toml::Value::Array(list));
    Config::parse(&toml::to_string(&table)?).map_err(|e| match e {
        crate::config::ParseFailure::Syntax(m) => anyhow!("{m}"),
        crate::config::ParseFailure::Invalid(errs) => anyhow!(
            "{}",
            errs.iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

pub fn load_overlay(state_dir: &Path) -> Result<BTreeMap<String, String>> {
    let p = overlay_path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} does not parse", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Written whole (a temporary file renamed over it): a crash never leaves half of it.
pub fn save_overlay(state_dir: &Path, overlay: &BTreeMap<String, String>) -> Result<()> {
    let p = overlay_path(state_dir);
    let tmp = p.with_extension("json.new");
    std::fs::write(&tmp, serde_json::to_vec_pretty(overlay)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("replacing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[daemon]\ninterfaces = [\"lo\"]\n\n[[service]]\nname = \"a\"\n\
        vip = \"198.18.10.1\"\nport = 514\nprotocol = \"udp\"\n\
        blue = { backend = \"198.18.1.2:514\" }\n\n[[service]]\nname = \"b\"\n\
        vip = \"198.18.10.1\"\nport = 601\nprotocol = \"tcp\"\n\
        blue = { backend = \"198.18.1.2:601\" }\n[service.watch]\nwindow_ms = 1000\n";

    fn file(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("dir");
        let p = dir.join("switcher.toml");
        std::fs::write(&p, FILE).expect("write");
        p
    }

    #[test]
    fn definitions_round_trip_and_an_overlay_replaces_only_its_service() {
        let dir = std::env::temp_dir().join(format!("switcher-defs-{}", std::process::id()));
        let path = file(&dir);
        let defs = file_services(&path).expect("definitions");
        assert_eq!(defs.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(defs["b"].contains("window_ms = 1000"), "{}", defs["b"]);
        // The file as it is: the same services.
        let text = read_file(&path).expect("read");
        let same = compose(&text, &defs).expect("compose");
        assert_eq!(same, Config::load(&path).expect("load"));
        // Another definition of b: a changes nothing, b takes the fleet's.
        let mut overlay = BTreeMap::new();
        overlay.insert("b".to_string(), defs["b"].replace("601", "602"));
        let c = compose(&text, &overlay).expect("compose");
        assert_eq!(
            c.service("a"),
            Config::load(&path).expect("load").service("a")
        );
        assert_eq!(c.service("b").map(|s| s.port), Some(602));
        // A definition that does not validate is refused whole, saying why.
        overlay.insert("b".to_string(), defs["b"].replace("601", "0"));
        let e = compose(&text, &overlay).expect_err("invalid");
        assert!(format!("{e:#}").contains("port"), "{e:#}");
        overlay.insert("b".to_string(), defs["a"].clone());
        assert!(
            compose(&text, &overlay).is_err(),
            "a definition must name its own service"
        );
        save_overlay(&dir, &defs).expect("save");
        assert_eq!(load_overlay(&dir).expect("load"), defs);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
