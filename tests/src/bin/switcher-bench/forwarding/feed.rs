//! How the edge receives the forwarding section's test flow, and the XDP frame source.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use switcher_tests::loaded::LoadedDatapath;

use crate::traffic::Pacer;

/// How the edge receives the test flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// From a packet socket on the client: veth hands the edge an skb, and an XDP program
    /// there first copies it into a page with XDP headroom (what veth does).
    Skb,
    /// As XDP frames (`bench_tx` in live-frames mode on the client): the edge's veth gets a
    /// buffer, as a NIC driver does; an XDP program runs on it directly, the kernel path
    /// builds the skb from it.
    XdpFrames,
}

impl Feed {
    pub const ALL: [Feed; 2] = [Feed::Skb, Feed::XdpFrames];

    pub fn key(self) -> &'static str {
        match self {
            Feed::Skb => "skb",
            Feed::XdpFrames => "xdp_frames",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Feed::Skb => "packet socket (the edge's veth receives skbs)",
            Feed::XdpFrames => {
                "XDP frames (the edge's veth receives buffers, as from a NIC driver)"
            }
        }
    }
}

/// `bench_tx` from a private copy of the datapath, pinned for frame-pacer while it lives.
pub struct FrameSource {
    loaded: LoadedDatapath,
    pub pin: PathBuf,
}

impl FrameSource {
    pub fn load(tag: &str) -> Result<FrameSource> {
        let mut loaded = LoadedDatapath::load("bench-tx")?;
        let pin = PathBuf::from(format!("/sys/fs/bpf/switcher-bench-tx-{tag}"));
        let _ = std::fs::remove_file(&pin);
        loaded
            .dp()?
            .bench_program("bench_tx")?
            .pin(&pin)
            .with_context(|| format!("pinning bench_tx at {}", pin.display()))?;
        Ok(FrameSource { loaded, pin })
    }

    /// Makes `bench_tx` send `pacer`'s frame.
    pub fn aim(&mut self, pacer: &Pacer) -> Result<()> {
        self.loaded.dp()?.set_bench_frame(&pacer.bytes)
    }
}

impl Drop for FrameSource {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.pin) {
            eprintln!("bench: removing {}: {e}", self.pin.display());
        }
    }
}
