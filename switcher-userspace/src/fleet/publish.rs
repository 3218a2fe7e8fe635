//! `switcher reload` on a fleet host: what changed in this host's file goes to every host,
//! through etcd. Nothing changes here first: this host takes the new definition like every
//! other host, from the revision it published (so a reload on a disconnected host changes
//! nothing).

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};

use super::{definitions, model::config_hash, writer::Revert, Fleet, FleetFlip};

impl Fleet {
    pub async fn reload(&self, actor: &str) -> Result<serde_json::Value> {
        // Refused whole while disconnected: the fleet's definitions change only through etcd.
        self.client()?;
        let text = definitions::read_file(&self.0.cfg_path)?;
        let file = definitions::services_of(&text)?;
        let (changed, removed) = {
            let _config = self.0.config.lock().await;
            let mut l = self.local();
            let base = l.file_seen.clone();
            let changed: BTreeMap<String, (String, Option<String>)> = file
                .iter()
                .filter(|(k, v)| base.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), (v.clone(), base.get(k).cloned())))
                .collect();
            let removed: Vec<String> = base
                .keys()
                .filter(|k| !file.contains_key(*k))
                .cloned()
                .collect();
            // What runs stays as it runs until the fleet's revision of it arrives: changed and
            // removed services are pinned at their running definitions over the new file.
            let mut overlay = l.overlay.clone();
            for k in changed.keys().chain(&removed) {
                if let Some(run) = l.running.get(k) {
                    overlay.insert(k.clone(), run.clone());
                }
            }
            definitions::compose(&text, &overlay)
                .context("the file with the fleet's definitions does not validate")?;
            definitions::save_overlay(&self.0.state_dir, &overlay)?;
            l.overlay = overlay;
            l.file_text = text;
            l.file_seen = file;
            (changed, removed)
        };
        let mut published = serde_json::Map::new();
        for (name, (def, base)) in &changed {
            let r = match self.publish(name, def, base.as_deref(), actor).await {
                Ok(v) => v,
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            };
            published.insert(name.clone(), r);
        }
        Ok(serde_json::json!({
            "published": published,
            // A service leaves the fleet only by an explicit operation (not built): it keeps
            // running here and everywhere.
            "kept_though_removed_from_file": removed,
        }))
    }

    /// Makes `def` (this host's file's definition of `service`, edited from `base`) the
    /// fleet's; refused when the fleet's definition is no longer `base` (someone changed it
    /// since this file was read: merge that first).
    async fn publish(
        &self,
        service: &str,
        def: &str,
        base: Option<&str>,
        actor: &str,
    ) -> Result<serde_json::Value> {
        let mut client = self.client()?;
        let (read_rev, current) = match self.read_desired(&mut client, service).await {
            Ok(r) => r,
            Err(_) => {
                let svc = self.local_service(service).await.ok();
                let Some(svc) = svc else {
                    bail!("{service} is new: it joins the fleet when this daemon restarts with it");
                };
                return Ok(match super::agent::seed(self, &mut client, &svc).await? {
                    Some((rev, _)) => serde_json::json!({ "seeded": rev }),
                    None => serde_json::json!({ "seeded": "by another host first" }),
                });
            }
        };
        if current.definition.as_deref() == Some(def) {
            return Ok(serde_json::to_value(FleetFlip::unchanged(
                service,
                current.active,
                read_rev,
            ))?);
        }
        if current.definition.is_some() && current.definition.as_deref() != base {
            bail!(
                "the fleet's definition of {service} changed since this host's file was read \
                 (revision {read_rev}, by {}): bring that change into this file, then reload",
                current.actor
            );
        }
        // The hash every host will run once it took `def`: composed here without applying.
        let planned = {
            let l = self.local();
            let mut overlay = l.overlay.clone();
            overlay.insert(service.to_string(), def.to_string());
            definitions::compose(&l.file_text, &overlay)?
        };
        let svc = self
            .0
            .ctl
            .preview(&planned)
            .await
            .into_iter()
            .find(|s| s.name == service)
            .context("the new definition lost its service")?;
        let mut next = current.next(
            format!("{actor}@{}", self.host()),
            format!("definition reloaded on {}", self.host()),
        );
        next.config_hash = config_hash(&svc);
        next.definition = Some(def.to_string());
        Ok(serde_json::to_value(
            self.commit(
                &mut client,
                service,
                read_rev,
                &current,
                next,
                "publish",
                Revert::No,
                false,
            )
            .await?,
        )?)
    }
}
