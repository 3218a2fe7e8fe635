//! `switcher reload` on a fleet host: what changed in this host's file goes to every host.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{definitions, model::config_hash, Fleet, FleetFlip};

impl Fleet {
    /// `switcher reload` on a fleet host: the file is re-read; what changed in it since it was
    /// last read is applied here (validated whole with the fleet's other definitions) and
    /// published to the fleet, every host acknowledging it. Services the file did not change
    /// keep the fleet's definitions.
    pub async fn reload(&self, actor: &str) -> Result<serde_json::Value> {
        let file = definitions::file_services(&self.0.cfg_path)?;
        let (changed, overlay) = {
            let l = self.local();
            let changed: BTreeMap<String, String> = file
                .iter()
                .filter(|(k, v)| l.file_seen.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut overlay = l.overlay.clone();
            overlay.retain(|k, _| !changed.contains_key(k));
            (changed, overlay)
        };
        let cfg = definitions::compose(&self.0.cfg_path, &overlay)?;
        let summary = self.0.ctl.apply_config(cfg, actor).await?;
        definitions::save_overlay(&self.0.state_dir, &overlay)?;
        {
            let mut l = self.local();
            l.file_seen = file;
            l.overlay = overlay;
        }
        let mut published = serde_json::Map::new();
        for (name, def) in &changed {
            let r = match self.publish(name, def, actor).await {
                Ok(v) => v,
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            };
            published.insert(name.clone(), r);
        }
        Ok(serde_json::json!({ "reload": summary, "published": published }))
    }

    /// Makes `def` (this host's file's definition of `service`) the fleet's.
    async fn publish(&self, service: &str, def: &str, actor: &str) -> Result<serde_json::Value> {
        let mut client = self.client()?;
        let svc = self.local_service(service).await?;
        let (read_rev, current) = match self.read_desired(&mut client, service).await {
            Ok(r) => r,
            Err(_) => {
                return Ok(match super::agent::seed(self, &mut client, &svc).await? {
                    Some((rev, _)) => serde_json::json!({ "seeded": rev }),
                    None => serde_json::json!({ "seeded": "by another host first" }),
                })
            }
        };
        let hash = config_hash(&svc);
        if current.config_hash == hash && current.definition.as_deref() == Some(def) {
            return Ok(serde_json::to_value(FleetFlip::unchanged(
                service,
                current.active,
                read_rev,
            ))?);
        }
        let mut next = current.next(
            format!("{actor}@{}", self.host()),
            format!("definition reloaded on {}", self.host()),
        );
        next.config_hash = hash;
        next.definition = Some(def.to_string());
        Ok(serde_json::to_value(
            self.commit(
                &mut client,
                service,
                read_rev,
                &current,
                next,
                "publish",
                false,
                false,
            )
            .await?,
        )?)
    }
}
