//! What a forwarding run must show to count: the path its label names.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use switcher::datapath::MapReader;
use switcher_common::Reason;
use switcher_tests::lab::EDGE_TO_CLIENT;

use crate::contenders::{Kind, Stage};

/// Share of the rewritten (and of the forwarded) packets that must have taken a switcher row's
/// own path. The rest leaves room for the first packets of a run, which may take the kernel
/// while the neighbour entry is resolved (`fib_fallback`).
pub const ON_PATH_PCT: u64 = 99;

/// The switcher datapath's verdicts on the packets it rewrote, from its reason counters
/// (summed over CPUs): each rewritten packet gets exactly one of the three.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verdicts {
    redirected: u64,
    pass_mode: u64,
    fib_fallback: u64,
}

impl Verdicts {
    pub fn read(maps: &MapReader) -> Result<Verdicts> {
        let mut v = Verdicts::default();
        for (reason, n) in maps.reasons()? {
            match reason {
                Reason::Redirected => v.redirected = n,
                Reason::PassMode => v.pass_mode = n,
                Reason::FibFallback => v.fib_fallback = n,
                _ => {}
            }
        }
        Ok(v)
    }

    pub fn since(self, e: Verdicts) -> Verdicts {
        Verdicts {
            redirected: self.redirected.saturating_sub(e.redirected),
            pass_mode: self.pass_mode.saturating_sub(e.pass_mode),
            fib_fallback: self.fib_fallback.saturating_sub(e.fib_fallback),
        }
    }

    fn rewritten(&self) -> u64 {
        self.redirected + self.pass_mode + self.fib_fallback
    }
}

/// Proves that a run of a switcher row took the row's own path: its verdict covers
/// [`ON_PATH_PCT`]% of what the datapath rewrote and of what the backend got.
pub fn check_verdicts(kind: Kind, v: Verdicts, forwarded: u64) -> Result<Value> {
    let (want, n) = match kind {
        Kind::SwitcherRedirect => (Reason::Redirected.label(), v.redirected),
        Kind::SwitcherPass => (Reason::PassMode.label(), v.pass_mode),
        _ => bail!("{} has no datapath verdict to check", kind.label()),
    };
    // Nothing reaches the backend without crossing the XDP hook.
    let edge = v.rewritten().max(forwarded);
    if edge == 0 || n * 100 < edge * ON_PATH_PCT {
        bail!(
            "the datapath counted {want} for {n} of the {} packets it rewrote (redirected {}, \
             pass_mode {}, fib_fallback {}; the backend got {forwarded}); at least \
             {ON_PATH_PCT}% must be {want}, so this row did not measure its own path: the \
             measurement is invalid",
            v.rewritten(),
            v.redirected,
            v.pass_mode,
            v.fib_fallback,
        );
    }
    Ok(json!({
        "rewritten": v.rewritten(),
        "redirected": v.redirected,
        "pass_mode": v.pass_mode,
        "fib_fallback": v.fib_fallback,
        "forwarded": forwarded,
        "expected": want,
        "on_path_pct": 100.0 * n as f64 / edge as f64,
    }))
}

/// Fails unless the edge's client-facing interface has an XDP program exactly when `xdp`.
pub fn check_edge_xdp(stage: &Stage, xdp: bool) -> Result<()> {
    match (stage.edge_xdp()?, xdp) {
        (Some(p), false) => bail!(
            "an XDP program is attached to the edge's {EDGE_TO_CLIENT} ({}, id {}) where the \
             plain kernel path is measured: the measurement is invalid",
            p["prog"]["name"].as_str().unwrap_or("?"),
            p["prog"]["id"]
        ),
        (None, true) => bail!(
            "no XDP program is attached to the edge's {EDGE_TO_CLIENT}: the measurement is \
             invalid"
        ),
        _ => Ok(()),
    }
}
