//! The controller's durable state: active colours, what each slot holds, the current
//! deployment of every service and their history. Saved atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the folder), so a crash at any instant leaves
//! either the old or the new state, never a torn one.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use tracing::warn;

use crate::{
    config::{describe, deserialize_members, Config, Member, Service},
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
    /// The colour's pool (empty: no backend). Earlier releases wrote one `backend`.
    #[serde(default, alias = "backend", deserialize_with = "deserialize_members")]
    pub members: Vec<Member>,
    /// The members came from `switcher deploy`, not from the config: they win over the
    /// config's until the config names the same ones (see [`State::settle`]). Files of
    /// earlier releases, where the deployed backend always won, read as true.
    #[serde(default = "yes")]
    pub deployed: bool,
    pub version: Option<String>,
    /// Known good: passed validation, served a whole watch window, or came from the config.
    /// A manual flip to a slot that is not trusted needs --force. (Stored and shown as
    /// `validated`, the name earlier releases wrote.)
    #[serde(rename = "validated")]
    pub trusted: bool,
}

fn yes() -> bool {
    true
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
        // History names backends and operators: root only. A leftover temporary file (a
        // crash) is removed first, so the mode below is the one it gets.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        // The rename itself must be durable too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }

    /// Slots whose deployed members the config now names exactly are the config's again: a
    /// later change of the config's pool (a node added on reload) then applies.
    pub fn settle(&mut self, cfg: &Config) {
        for s in &cfg.services {
            let Some(st) = self.services.get_mut(&s.name) else {
                continue;
            };
            for c in Color::BOTH {
                let slot = st.slot_mut(c);
                if slot.deployed && slot.members == s.members(c) {
                    slot.deployed = false;
                }
            }
        }
    }

    /// The config's services with what the state knows layered on top: deployed members
    /// and the active colour survive restarts and reloads.
    pub fn effective(&self, cfg: &Config) -> Vec<Service> {
        cfg.services
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if let Some(st) = self.services.get(&s.name) {
                    for c in Color::BOTH {
                        let slot = st.slot(c);
                        if !slot.deployed || slot.members.is_empty() {
                            continue;
                        }
                        if !s.members(c).is_empty() && s.members(c) != slot.members {
                            warn!(service = %s.name, color = %c, config = %describe(s.members(c)),
                                kept = %describe(&slot.members),
                                "the config's pool differs from the deployed one; keeping the deployed one");
                        }
                        *s.members_mut(c) = slot.members.clone();
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
            vec![crate::config::Member::new(
                "198.18.2.2:514".parse().expect("addr"),
            )],
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
                    members: vec![Member::new("198.18.1.2:514".parse().expect("addr"))],
                    deployed: true,
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
    fn the_state_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tmpdir("mode");
        fs::create_dir_all(&dir).expect("dir");
        // A leftover temporary file from a crash, with a wide mode: replaced, not reused.
        fs::write(dir.join("state.json.tmp"), "{}").expect("leftover");
        fs::set_permissions(
            dir.join("state.json.tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        State::default().save(&dir).expect("save");
        let mode = fs::metadata(State::path(&dir))
            .expect("state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "state.json is mode {mode:o}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn slots_are_stored_as_earlier_releases_wrote_them() {
        // A state file from before `validated` was called `trusted` in the code.
        // One `backend` (before pools), which then always won over the config.
        let old = r#"{"backend": "198.18.2.2:514", "version": "v2", "validated": true}"#;
        let slot: Slot = serde_json::from_str(old).expect("old slot");
        assert!(slot.trusted && slot.deployed);
        assert_eq!(
            slot.members,
            [Member::new("198.18.2.2:514".parse().expect("addr"))]
        );
        let back = serde_json::to_value(&slot).expect("json");
        assert_eq!(
            back,
            serde_json::json!({
                "members": [{"addr": "198.18.2.2:514", "weight": 1}],
                "deployed": true, "version": "v2", "validated": true
            })
        );
        let none: Slot =
            serde_json::from_str(r#"{"backend": null, "version": null, "validated": false}"#)
                .expect("empty slot");
        assert!(none.members.is_empty());
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
                vec![crate::config::Member::new(
                    "198.18.2.2:514".parse().expect("addr"),
                )],
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
