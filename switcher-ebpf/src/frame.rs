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
        let p = self.ptr::<u8>(off + N - 1)?.wrapping_sub(N - 1);
        // Byte stores, unrolled: an array assignment here became a call to the builtin
        // memmove, a byte loop, on every rewritten packet.
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: `ptr` checked that byte off + N - 1 lies inside the packet, so all N do.
            unsafe { p.add(i).write(*b) };
        }
        Some(())
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p = self.ptr::<[u8; N]>(off)?;
        // SAFETY: bounds checked by `ptr`; [u8; N] has alignment 1.
        Some(unsafe { *p })
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
