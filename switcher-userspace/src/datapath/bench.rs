//! Hooks only the benchmark uses: the reference programs it compares the datapath against.
//! The daemon never loads them; they exist behind the `bench` feature.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::Xdp,
};

use super::{loader::program, BpfDatapath};

impl BpfDatapath {
    /// One of the reference programs (`bench_floor`, `bench_drop`), loaded on first use.
    pub fn bench_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(prog)
    }

    /// Packets counted by the reference programs, summed over CPUs.
    pub fn bench_packets(&self) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map("BENCH_PACKETS")
            .ok_or_else(|| anyhow!("map BENCH_PACKETS missing"))?
            .try_into()
            .context("BENCH_PACKETS type")?;
        Ok(map.get(&0, 0)?.iter().sum())
    }
}
