//! Arrays the daemon writes through a shared mapping of the map (BPF_F_MMAPABLE) rather than
//! bpf(2): a flip is then a few stores into memory the XDP program reads, with no system call
//! on its path. A bpf(2) update cost about 10 µs each on a core that had been idle (the flip's
//! two took 20–27 µs of its 40 µs at the median), against well under one for the stores.

use std::{
    marker::PhantomData,
    mem::{align_of, size_of},
    num::NonZeroUsize,
    os::fd::AsFd,
    path::Path,
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapData, MapType};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use switcher_common::MAP_F_MMAPABLE;

/// A pinned array of `T` mapped into this process. Elements are `T` rounded up to 8 bytes,
/// as the kernel lays out an array's values.
pub struct MappedArray<T> {
    base: NonNull<u8>,
    bytes: usize,
    entries: u32,
    name: String,
    _t: PhantomData<T>,
}

// SAFETY: the mapping belongs to this value alone (unmapped on drop) and is only reached
// through atomic word stores, which may come from any thread.
unsafe impl<T> Send for MappedArray<T> {}
// SAFETY: as above; concurrent writers at worst interleave whole words, as two bpf(2)
// updates of one element would.
unsafe impl<T> Sync for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    const STRIDE: usize = size_of::<T>().next_multiple_of(8);

    /// Maps the pinned array at `pin`: it must be an array of `T`-sized values created
    /// mmapable (the datapath's maps of this ABI version are).
    pub fn open(pin: &Path) -> Result<Self> {
        const {
            assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4);
        }
        let name = pin.file_name().map_or_else(
            || pin.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let map = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
        let info = map.info().with_context(|| format!("reading map {name}"))?;
        if !matches!(info.map_type(), Ok(MapType::Array))
            || info.value_size() as usize != size_of::<T>()
        {
            bail!(
                "map {name} is not an array of {}-byte values",
                size_of::<T>()
            );
        }
        if info.map_flags() & MAP_F_MMAPABLE == 0 {
            bail!("map {name} was created without BPF_F_MMAPABLE: it cannot be mapped");
        }
        let entries = info.max_entries();
        let bytes = NonZeroUsize::new(Self::STRIDE * entries as usize)
            .with_context(|| format!("map {name} has no entries"))?;
        // SAFETY: a fresh shared mapping of the map's values, owned by the value returned
        // (unmapped on drop); the fd may be closed once mapped.
        let base = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .with_context(|| format!("mapping {name}"))?;
        Ok(Self {
            base: base.cast(),
            bytes: bytes.get(),
            entries,
            name,
            _t: PhantomData,
        })
    }

    /// Where element `i` starts.
    fn element(&self, i: u32) -> Result<*mut u8> {
        if i >= self.entries {
            bail!(
                "{}: index {i} is beyond its {} entries",
                self.name,
                self.entries
            );
        }
        // SAFETY: in bounds (checked above) of the mapping, which lives as long as `self`.
        Ok(unsafe { self.base.as_ptr().add(i as usize * Self::STRIDE) })
    }

    /// Writes element `i` a word at a time: 8-byte words when `T` is made of them (so a u64
    /// field, such as a flip's time, is never seen half written), else 4-byte ones. Every
    /// store is visible before any later store of this thread, so a field written after this
    /// call (the ACTIVE word after the flip mark) is never seen without it.
    pub fn set(&self, i: u32, value: &T) -> Result<()> {
        let at = self.element(i)?;
        if size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8 {
            store::<AtomicU64, u64, T>(at, value, |w, v| w.store(v, Ordering::Relaxed));
        } else {
            store::<AtomicU32, u32, T>(at, value, |w, v| w.store(v, Ordering::Relaxed));
        }
        fence(Ordering::Release);
        Ok(())
    }
}

/// Copies `value` to `at` as words `W` (an atomic of the integer `I`).
fn store<W, I: Copy, T>(at: *mut u8, value: &T, put: impl Fn(&W, I)) {
    let n = size_of::<T>() / size_of::<I>();
    // SAFETY: `at` is an element of the mapping, 8-aligned (page-aligned base, stride a
    // multiple of 8) and STRIDE >= size_of::<T>() bytes long; W has I's layout; T is plain
    // data of n whole words of I (the caller chose I so).
    let (dst, src) = unsafe {
        (
            std::slice::from_raw_parts(at.cast::<W>(), n),
            std::slice::from_raw_parts((value as *const T).cast::<I>(), n),
        )
    };
    for (w, v) in dst.iter().zip(src) {
        put(w, *v);
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of `bytes` bytes, unmapped once.
        if let Err(e) = unsafe { munmap(self.base.cast(), self.bytes) } {
            tracing::warn!("unmapping {}: {e}", self.name);
        }
    }
}
