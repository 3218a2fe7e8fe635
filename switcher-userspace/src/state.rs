//! The controller's durable state: active colours, what each slot holds, the current
//! deployment of every service and their history. Saved atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the folder), so a crash at any instant leaves
//! either the old or the new state, never a torn one.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use tracing::warn;

use crate::{
    config::{Config, Service},
    deploy::Deployment,
    domain::Color,
};

/// How many finished deployments are kept per service.
pub const HISTORY_LIMIT: usize = 200;
const FILE: &str = "state.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file ({source}); move it away to start from the config")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format {found}, this switcher reads {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("saving state to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One colour's slot of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub backend: Option<SocketAddr>,
    pub version: Option<String>,
    /// Known good: passed validation, served a whole watch window, or came from the config.
    /// A manual flip to a slot that is not trusted needs --force. (Stored and shown as
    /// `validated`, the name earlier releases wrote.)
    #[serde(rename = "validated")]
    pub trusted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub active: Color,
    pub generation: u32,
    pub blue: Slot,
    pub green: Slot,
    #[serde(default)]
    pub current: Option<Deployment>,
}

impl ServiceState {
    pub fn slot(&self, c: Color) -> &Slot {
        match c {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    pub fn slot_mut(&mut self, c: Color) -> &mut Slot {
        match c {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub next_deployment: u64,
    pub services: BTreeMap<String, ServiceState>,
    /// Finished deployments, oldest first.
    pub history: BTreeMap<String, Vec<Deployment>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            format: FORMAT,
            next_deployment: 1,
            services: BTreeMap::new(),
            history: BTreeMap::new(),
        }
    }
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// The saved state, or an empty one when there is none yet.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = Self::path(dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        if state.format != FORMAT {
            return Err(StateError::Format {
                path,
                found: state.format,
            });
        }
        Ok(state)
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        // The rename itself must be durable too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }

    /// The config's services with what the state knows layered on top: deployed backends and
    /// the active colour survive restarts and reloads.
    pub fn effective(&self, cfg: &Config) -> Vec<Service> {
        cfg.services
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if let Some(st) = self.services.get(&s.name) {
                    for c in Color::BOTH {
                        let (configured, deployed) = (s.backend(c), st.slot(c).backend);
                        if deployed != configured && configured.is_some() && deployed.is_some() {
                            warn!(service = %s.name, color = %c, config = ?configured, kept = ?deployed,
                                "backend differs from the deployed one; keeping the deployed one");
                        }
                        *s.backend_mut(c) = deployed.or(configured);
                    }
                    s.active = st.active;
                }
                s
            })
            .collect()
    }

    pub fn allocate_id(&mut self) -> u64 {
        let id = self.next_deployment;
        self.next_deployment += 1;
        id
    }

    /// Moves final deployments out of `current` into the history.
    pub fn archive_finished(&mut self) {
        let mut done = Vec::new();
        for st in self.services.values_mut() {
            if st.current.as_ref().is_some_and(|d| d.phase.is_final()) {
                done.extend(st.current.take());
            }
        }
        for d in done {
            self.archive(d);
        }
    }

    /// Moves a finished or replaced deployment into the history.
    pub fn archive(&mut self, d: Deployment) {
        let h = self.history.entry(d.service.clone()).or_default();
        h.push(d);
        if h.len() > HISTORY_LIMIT {
            let excess = h.len() - HISTORY_LIMIT;
            h.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{Phase, Step};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("switcher-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = tmpdir("rt");
        assert_eq!(State::load(&dir).expect("empty"), State::default());
        let mut s = State::default();
        let id = s.allocate_id();
        let mut d = Deployment::new(
            id,
            "svc",
            Color::Green,
            "198.18.2.2:514".parse().expect("addr"),
            None,
            "cli",
            5,
        );
        d.apply(
            Step::StartValidation,
            "cli",
            "go",
            Some(serde_json::json!({"k": 1})),
            6,
        )
        .expect("step");
        s.services.insert(
            "svc".into(),
            ServiceState {
                active: Color::Blue,
                generation: 3,
                blue: Slot {
                    backend: Some("198.18.1.2:514".parse().expect("addr")),
                    version: None,
                    trusted: true,
                },
                green: Slot::default(),
                current: Some(d),
            },
        );
        s.save(&dir).expect("save");
        let back = State::load(&dir).expect("load");
        assert_eq!(back, s);
        assert_eq!(
            back.services["svc"].current.as_ref().map(|d| d.phase),
            Some(Phase::Validating)
        );
        assert!(!dir.join("state.json.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn slots_are_stored_as_earlier_releases_wrote_them() {
        // A state file from before `validated` was called `trusted` in the code.
        let old = r#"{"backend": "198.18.2.2:514", "version": "v2", "validated": true}"#;
        let slot: Slot = serde_json::from_str(old).expect("old slot");
        assert!(slot.trusted);
        let back = serde_json::to_value(&slot).expect("json");
        assert_eq!(
            back,
            serde_json::json!({"backend": "198.18.2.2:514", "version": "v2", "validated": true})
        );
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tmpdir("bad");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(State::path(&dir), "{ not json").expect("write");
        let e = State::load(&dir).expect_err("must fail");
        assert!(e.to_string().contains("not a valid state file"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = State::default();
        for i in 0..(HISTORY_LIMIT as u64 + 5) {
            s.archive(Deployment::new(
                i,
                "svc",
                Color::Green,
                "198.18.2.2:514".parse().expect("addr"),
                None,
                "cli",
                i,
            ));
        }
        let h = &s.history["svc"];
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h[0].id, 5, "oldest dropped first");
    }
}
