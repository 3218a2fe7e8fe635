//! Walking the flow table from userspace. aya 0.14 walks a hash map with get-next-key plus a
//! lookup, two syscalls per entry (about 0.6 s for a full table here), and restarts from the
//! first key when the key it stands on is evicted. BPF_MAP_LOOKUP_BATCH (Linux 5.6), which
//! aya does not wrap, returns thousands of entries per call and walks bucket by bucket.

use std::{
    borrow::Borrow,
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, IterableMap as _, MapData};
use switcher_common::{FlowKey, FlowValue, FLOW_TABLE_SIZE};

/// Calls `f` with every entry of the flow table: in batches where the kernel supports them,
/// else key by key (bounded to the table's size, as a restarted walk may repeat entries).
pub fn for_each<T: Borrow<MapData>>(
    map: &HashMap<T, FlowKey, FlowValue>,
    mut f: impl FnMut(&FlowKey, &FlowValue),
) -> Result<()> {
    match batched(map.map().fd().as_fd(), &mut f) {
        Ok(()) => return Ok(()),
        Err(Batch::Unsupported(e)) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(
                    "batch lookups on the flow table failed ({e}); walking it key by key"
                )
            });
        }
        Err(Batch::Failed(e)) => return Err(e).context("batch lookup on the flow table"),
    }
    for (k, v) in map
        .iter()
        .take(FLOW_TABLE_SIZE as usize)
        .filter_map(|r| r.ok())
    {
        f(&k, &v);
    }
    Ok(())
}

enum Batch {
    /// The first call failed: nothing was visited, walking key by key is safe.
    Unsupported(io::Error),
    /// A later call failed: entries were visited already.
    Failed(io::Error),
}

/// The kernel's `bpf_attr.batch` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries per call. A hash map returns whole buckets, so this must exceed the longest one.
const CHUNK: usize = 4096;

fn batched(fd: BorrowedFd<'_>, f: &mut impl FnMut(&FlowKey, &FlowValue)) -> Result<(), Batch> {
    let mut keys = vec![FlowKey::default(); CHUNK];
    let mut values = vec![FlowValue::default(); CHUNK];
    // The batch token of hash maps is a bucket index (u32).
    let mut token_in: u32 = 0;
    let mut token_out: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token_in as *mut u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of CHUNK keys and values of the flow table's key and
        // value types (the caller's typed map checked their sizes) and at two u32 batch
        // tokens, all alive for the call; the kernel writes at most `count` entries.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            f(k, v);
        }
        match err {
            None => {}
            // ENOENT: that was the last batch.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) if first && n == 0 => return Err(Batch::Unsupported(e)),
            Some(e) => return Err(Batch::Failed(e)),
        }
        token_in = token_out;
        first = false;
    }
}
