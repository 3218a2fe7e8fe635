//! A datapath loaded (not attached) under a bpffs folder of its own, for BPF_PROG_TEST_RUN:
//! the datapath fixtures and the benchmark share it. Its pins go when it is dropped, also
//! when a test or a measurement fails half-way.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use aya::programs::{ProgramError, TestRun, TestRunOptions, TestRunResult};
use switcher::{
    config::Config,
    datapath::{self, BpfDatapath, ServiceReading},
    domain::Color,
};
use switcher_common::{ColorCounters, Reason};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct LoadedDatapath {
    dp: Option<BpfDatapath>,
    /// Service name → id, from the last [`LoadedDatapath::apply`].
    pub ids: BTreeMap<String, u32>,
    bpffs: PathBuf,
}

/// Which program a run goes through.
#[derive(Debug, Clone, Copy)]
pub enum Program<'a> {
    /// The XDP ingress program (switcher_ingress).
    Ingress,
    /// The TC egress program.
    Egress,
    /// One of the benchmark's reference programs (`bench_floor`, `bench_call`, `bench_tx`).
    Reference(&'a str),
}

/// What one BPF_PROG_TEST_RUN call returned.
#[derive(Debug, Clone)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    /// The kernel's mean time per iteration.
    pub duration: Duration,
}

impl LoadedDatapath {
    /// A fresh datapath pinned under `/sys/fs/bpf/switcher-<tag>-<pid>-<n>`.
    pub fn load(tag: &str) -> Result<Self> {
        Self::load_object(tag, None)
    }

    /// [`LoadedDatapath::load`] with another build of the eBPF object (`None`: the one built
    /// into switcher).
    pub fn load_object(tag: &str, object: Option<&[u8]>) -> Result<Self> {
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/switcher-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let dp = match object {
            Some(o) => BpfDatapath::load_object(&bpffs, o)?,
            None => BpfDatapath::load(&bpffs)?,
        };
        Ok(Self {
            dp: Some(dp),
            ids: BTreeMap::new(),
            bpffs,
        })
    }

    /// Programs `services` (the `[[service]]` part of a config) into the maps and returns the
    /// config they were parsed into.
    pub fn apply(&mut self, services: &str) -> Result<Config> {
        let text = format!(
            "[daemon]\ninterfaces = [\"lo\"]\nbpffs_dir = \"{}\"\n{services}",
            self.bpffs.display()
        );
        let cfg = Config::parse(&text).map_err(|e| anyhow!("test config invalid: {e:?}"))?;
        self.ids = self.dp()?.apply(&cfg.services)?;
        Ok(cfg)
    }

    pub fn dp(&mut self) -> Result<&mut BpfDatapath> {
        self.dp.as_mut().context("datapath already released")
    }

    fn dp_ref(&self) -> Result<&BpfDatapath> {
        self.dp.as_ref().context("datapath already released")
    }

    pub fn id(&self, service: &str) -> Result<u32> {
        self.ids
            .get(service)
            .copied()
            .with_context(|| format!("service {service} is not configured"))
    }

    /// The folder holding the pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        datapath::maps_dir(&self.bpffs)
    }

    /// One BPF_PROG_TEST_RUN of `pkt` through `program`, `repeat` times (0: once).
    pub fn run(&mut self, program: Program<'_>, pkt: &[u8], repeat: u32) -> Result<Run> {
        // Room for encapsulation the program might add; it never grows a packet by more.
        let mut out = vec![0u8; pkt.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let dp = self.dp()?;
        let r: Result<TestRunResult, ProgramError> = match program {
            Program::Ingress => dp.xdp_program()?.test_run(opts),
            Program::Egress => dp.tc_program()?.test_run(opts),
            Program::Reference(name) => dp.bench_program(name)?.test_run(opts),
        };
        let r = r.context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            action: r.return_value,
            out,
            duration: r.duration,
        })
    }

    /// Packets counted under reason `r`, summed over CPUs.
    pub fn reason(&self, r: Reason) -> Result<u64> {
        Ok(self
            .dp_ref()?
            .reader()
            .reasons()?
            .into_iter()
            .find(|(x, _)| *x == r)
            .map_or(0, |(_, n)| n))
    }

    /// Service `id`'s active word, flip mark and counters.
    pub fn read(&self, id: u32) -> Result<ServiceReading> {
        self.dp_ref()?.reader().service(id)
    }

    /// Service `id`'s counters for colour `c`, summed over CPUs.
    pub fn counters(&self, id: u32, c: Color) -> Result<ColorCounters> {
        Ok(*self.read(id)?.counters(c))
    }

    /// Packets the reference programs counted.
    pub fn reference_packets(&self) -> Result<u64> {
        self.dp_ref()?.bench_packets()
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }
}

impl Drop for LoadedDatapath {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let pins = dp.dir().to_path_buf();
            drop(dp);
            if let Err(e) = datapath::remove_pins(&pins) {
                eprintln!("warning: could not remove {}: {e:#}", pins.display());
            }
        }
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}
