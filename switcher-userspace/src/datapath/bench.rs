//! Hooks only the benchmark uses: the reference programs it compares the datapath against.
//! The daemon never loads them; they exist behind the `bench` feature.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};

use super::{loader::program, BpfDatapath};

impl BpfDatapath {
    /// One of the reference programs (`bench_floor`, `bench_call`, `bench_tx`), loaded on first use.
    pub fn bench_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(prog)
    }

    /// The headers `bench_tx` writes into every frame it sends: the first 64 bytes of `frame`.
    pub fn set_bench_frame(&mut self, frame: &[u8]) -> Result<()> {
        let head: [u8; 64] = frame
            .get(..64)
            .and_then(|h| h.try_into().ok())
            .context("the bench frame is shorter than 64 bytes")?;
        let mut words = [0u64; 8];
        for (w, b) in words.iter_mut().zip(head.chunks_exact(8)) {
            *w = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        }
        let mut map: Array<&mut MapData, [u64; 8]> = self
            .ebpf
            .map_mut("BENCH_FRAME_HEAD")
            .ok_or_else(|| anyhow!("map BENCH_FRAME_HEAD missing"))?
            .try_into()
            .context("BENCH_FRAME_HEAD type")?;
        map.set(0, words, 0).context("writing BENCH_FRAME_HEAD")?;
        Ok(())
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
