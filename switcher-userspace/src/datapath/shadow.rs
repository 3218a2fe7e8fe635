//! Shadowing in the maps: the SHADOW entry of a service, the SHADOW_ANY gate, the copies
//! counted per CPU.

use anyhow::{Context as _, Result};
use switcher_common::{names, ShadowCounters, ShadowValue};

use super::{BpfDatapath, Shadow};

impl BpfDatapath {
    /// See [`Datapath::set_shadow`].
    pub fn set_shadow(&mut self, id: u32, shadow: Option<Shadow>) -> Result<()> {
        let v = shadow.map_or(ShadowValue::default(), |s| ShadowValue {
            share: s.share.min(0x10000),
            color: s.color.index(),
            _pad: 0,
            port_be: s.port.to_be(),
            until_ns: s.until_ns,
        });
        // The gate opens before the first entry is written and closes after the last is
        // cleared: an entry is never on behind a closed gate.
        let any = {
            let on = &mut self.shadowing;
            if v.share != 0 {
                on.insert(id);
            } else {
                on.remove(&id);
            }
            u32::from(!on.is_empty())
        };
        if any == 1 {
            self.array_mut::<u32>(names::SHADOW_ANY)?
                .set(0, 1, 0)
                .context("writing SHADOW_ANY")?;
        }
        self.array_mut::<ShadowValue>(names::SHADOW)?
            .set(id, v, 0)
            .context("writing SHADOW")?;
        if any == 0 {
            self.array_mut::<u32>(names::SHADOW_ANY)?
                .set(0, 0, 0)
                .context("writing SHADOW_ANY")?;
        }
        Ok(())
    }

    /// See [`Datapath::shadow_counters`].
    pub fn shadow_counters(&self, id: u32) -> Result<ShadowCounters> {
        let map = self
            .ebpf
            .map(names::SHADOW_COUNTERS)
            .ok_or_else(|| anyhow::anyhow!("map {} missing", names::SHADOW_COUNTERS))?;
        let per_cpu: aya::maps::PerCpuArray<&aya::maps::MapData, ShadowCounters> =
            aya::maps::PerCpuArray::try_from(map).context("map SHADOW_COUNTERS")?;
        let mut total = ShadowCounters::default();
        for c in per_cpu
            .get(&id, 0)
            .context("reading SHADOW_COUNTERS")?
            .iter()
        {
            total.add(c);
        }
        Ok(total)
    }
}
