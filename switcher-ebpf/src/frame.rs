//! Bounds-checked byte access to a packet for XDP (direct access) and TC (bpf_skb_load_bytes):
//! both implement switcher-common's [`Frame`], so both directions share its parser.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use switcher_common::parse::Frame;

pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// A pointer to `T` at `off`, checked against the end of the packet in a form the verifier
    /// tracks (packet pointer + bounded offset compared with data_end).
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        if self.start + off + size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + off) as *mut T)
    }

    #[inline(always)]
    pub fn write<const N: usize>(&self, off: usize, bytes: [u8; N]) -> Option<()> {
        let p = self.ptr::<[u8; N]>(off)?.cast::<u8>();
        let word = |i: usize, n: usize| {
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(&bytes[i..i + n]);
            u64::from_ne_bytes(w)
        };
        let mut i = 0;
        // SAFETY (every store below): `ptr` checked that all N bytes lie inside the packet, and
        // each store writes bytes i.. of them only.
        while i + 8 <= N {
            unsafe { store64(p.add(i), word(i, 8)) };
            i += 8;
        }
        if i + 4 <= N {
            unsafe { store32(p.add(i), word(i, 4)) };
            i += 4;
        }
        if i + 2 <= N {
            unsafe { store16(p.add(i), word(i, 2)) };
            i += 2;
        }
        if i < N {
            // SAFETY: as above; a single byte has no alignment.
            unsafe { p.add(i).write(bytes[i]) };
        }
        Some(())
    }
}

/// Loads of `$ty` from a packet address without an alignment requirement. LLVM's BPF backend
/// splits any access it cannot prove aligned into single bytes, and packet headers are rarely
/// word-aligned (IPv4 addresses sit at 2 mod 4 behind a 14-byte Ethernet header); this
/// architecture's JIT loads unaligned words directly, and the verifier allows it on packet
/// data. Written as the instruction itself, so no Rust or LLVM alignment rule is involved.
macro_rules! load {
    ($name:ident, $ty:ty, $insn:literal) => {
        /// # Safety
        /// `p` must point into the packet with the load's size checked against its end.
        #[inline(always)]
        unsafe fn $name(p: *const u8) -> $ty {
            let v: u64;
            // SAFETY: the caller checked the bounds; the load has no other effect.
            unsafe {
                core::arch::asm!($insn, out(reg) v, in(reg) p, options(nostack, readonly, preserves_flags));
            }
            v as $ty
        }
    };
}
load!(load64, u64, "{0} = *(u64 *)({1} + 0)");
load!(load32, u32, "{0} = *(u32 *)({1} + 0)");
load!(load16, u16, "{0} = *(u16 *)({1} + 0)");

/// Stores of a word's low bytes to a packet address, unaligned (see `load!`).
macro_rules! store {
    ($name:ident, $insn:literal) => {
        /// # Safety
        /// `p` must point into the packet with the store's size checked against its end.
        #[inline(always)]
        unsafe fn $name(p: *mut u8, v: u64) {
            // SAFETY: the caller checked the bounds.
            unsafe {
                core::arch::asm!($insn, in(reg) p, in(reg) v, options(nostack, preserves_flags));
            }
        }
    };
}
store!(store64, "*(u64 *)({0} + 0) = {1}");
store!(store32, "*(u32 *)({0} + 0) = {1}");
store!(store16, "*(u16 *)({0} + 0) = {1}");

impl Frame for XdpFrame {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p = self.ptr::<[u8; N]>(off)?.cast::<u8>().cast_const();
        let mut out = [0u8; N];
        let mut i = 0;
        // SAFETY (every load below): `ptr` checked that all N bytes lie inside the packet, and
        // each load reads bytes i.. of them only.
        while i + 8 <= N {
            out[i..i + 8].copy_from_slice(&unsafe { load64(p.add(i)) }.to_ne_bytes());
            i += 8;
        }
        if i + 4 <= N {
            out[i..i + 4].copy_from_slice(&unsafe { load32(p.add(i)) }.to_ne_bytes());
            i += 4;
        }
        if i + 2 <= N {
            out[i..i + 2].copy_from_slice(&unsafe { load16(p.add(i)) }.to_ne_bytes());
            i += 2;
        }
        if i < N {
            // SAFETY: as above; a single byte has no alignment.
            out[i] = unsafe { *p.add(i) };
        }
        Some(out)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }
}

pub struct TcFrame<'a>(pub &'a TcContext);

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(off).ok()
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }
}
