//! `switcher flows`: the established connections the datapath pins, from a walk of the
//! protected flow table, each with its service, colour, member and age.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use switcher_common::{FLOW_CLOSING, FLOW_F_DATA};

use super::core::Core;
use crate::{
    datapath::read::{endpoint_addr, socket_addr},
    domain::Color,
};

/// Connections shown when the request names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// The most a request may ask for: a full table is 262,144 connections.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowView {
    pub service: String,
    pub color: Color,
    pub client: SocketAddr,
    pub member: SocketAddr,
    /// `open`, or `closing` (a FIN or reset was seen; removed after the grace).
    pub state: String,
    /// The client sent data on it (not a bare handshake).
    pub data: bool,
    pub age_seconds: f64,
    /// Since its last packet (refreshed about once a second).
    pub idle_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowsView {
    /// Connections that match, all of them counted.
    pub total: usize,
    /// The oldest `limit` of them.
    pub flows: Vec<FlowView>,
    pub truncated: bool,
}

impl Core {
    /// The established connections of `service` (all services: `None`), oldest first, at most
    /// `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    pub fn flows(&self, service: Option<&str>, limit: Option<usize>) -> Result<FlowsView> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            bail!("limit must be 1..={MAX_LIMIT}, got {limit}");
        }
        let want = match service {
            Some(name) => Some(self.id(name)?),
            None => None,
        };
        let names: std::collections::HashMap<u32, &str> =
            self.ids.iter().map(|(n, id)| (*id, n.as_str())).collect();
        let now = crate::datapath::monotonic_coarse_ns()?;
        let mut all = Vec::new();
        self.dp.for_each_flow(&mut |k, v| {
            if want.is_some_and(|id| id != v.service_id) {
                return;
            }
            let Some(name) = names.get(&v.service_id) else {
                return; // a removed service's entry, swept soon
            };
            let client = endpoint_addr(&switcher_common::Endpoint {
                addr: k.src,
                port_be: k.sport_be,
                proto: k.proto,
                family: k.family,
            });
            all.push(FlowView {
                service: (*name).to_string(),
                color: Color::from_index(v.color),
                client,
                member: socket_addr(&v.backend),
                state: if v.state == FLOW_CLOSING {
                    "closing"
                } else {
                    "open"
                }
                .into(),
                data: v.flags & FLOW_F_DATA != 0,
                age_seconds: now.saturating_sub(v.created_ns) as f64 / 1e9,
                idle_seconds: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            });
        })?;
        all.sort_by(|a, b| {
            b.age_seconds
                .total_cmp(&a.age_seconds)
                .then(a.client.cmp(&b.client))
        });
        let total = all.len();
        all.truncate(limit);
        Ok(FlowsView {
            total,
            truncated: total > all.len(),
            flows: all,
        })
    }
}
