//! BPF_MAP_LOOKUP_BATCH on the flow table. aya 0.14 does not wrap it; walking the table with
//! get-next-key plus lookup costs two syscalls per entry (about 0.6 s for a full table here),
//! a batch call returns thousands of entries at once and walks bucket by bucket, so evictions
//! during the walk cannot restart it.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use switcher_common::{FlowKey, FlowValue};

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

/// Calls `f` with every value in the hash map `fd` (keys of type FlowKey, values FlowValue).
/// Errors with the kernel's errno when batch lookups are not supported (Linux before 5.6):
/// the caller then walks key by key.
pub fn for_each_flow(fd: BorrowedFd<'_>, mut f: impl FnMut(&FlowValue)) -> io::Result<()> {
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
        // SAFETY: attr points at buffers of CHUNK keys and values of the map's key and value
        // sizes (checked by the caller's typed map) and at two u32 batch tokens, all alive for
        // the call; the kernel writes at most `count` entries.
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
        for v in &values[..n] {
            f(v);
        }
        match err {
            None => {}
            // ENOENT: that was the last batch.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}
