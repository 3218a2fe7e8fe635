//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624, eqn. 3).
//!
//! Words are 16-bit values read big-endian from the packet, so results are written back with
//! `to_be_bytes`. The datapath uses [`Delta`] to patch the IPv4 header, TCP and UDP checksums
//! after rewriting addresses and ports without touching the payload.

/// Folds a 32-bit ones'-complement accumulator to 16 bits (end-around carry).
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Folds a 64-bit ones'-complement accumulator to 16 bits.
pub const fn fold64(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    fold(s as u32)
}

/// Sum of the replaced words: `~m + m'` for each change, unfolded. Ones'-complement addition
/// is the same over 16- or 32-bit words once folded, and each change adds under 2^33, so the
/// accumulator holds billions of them: the datapath folds once, in `apply`, instead of after
/// every word (a dependent chain of shifts and adds per word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    pub const fn new() -> Self {
        Self(0)
    }

    /// Records that 16-bit word `old` became `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records that the 32-bit big-endian word `old` became `new` (two 16-bit words).
    #[inline(always)]
    fn word32(&mut self, old: [u8; 4], new: [u8; 4]) {
        self.0 += u64::from(!u32::from_be_bytes(old)) + u64::from(u32::from_be_bytes(new));
    }

    /// Records that a 4-byte field (an IPv4 address) changed.
    #[inline(always)]
    pub fn bytes4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.word32(*old, *new);
    }

    /// Records that a 16-byte field (an IPv6 address) changed.
    #[inline(always)]
    pub fn bytes16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        let mut i = 0;
        while i < 16 {
            self.word32(
                [old[i], old[i + 1], old[i + 2], old[i + 3]],
                [new[i], new[i + 1], new[i + 2], new[i + 3]],
            );
            i += 4;
        }
    }

    /// The checksum field after the recorded changes: `HC' = ~(~HC + ~m + m')`.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold64(u64::from(!check) + self.0)
    }

    /// UDP over IPv4: zero means "no checksum" and must stay zero; a computed zero is sent as
    /// 0xffff (RFC 768), which receivers treat as the same value.
    #[inline(always)]
    pub fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Ones'-complement sum of `data` (odd length padded with a zero byte), unfolded.
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = fold(acc + u16::from_be_bytes([c[0], c[1]]) as u32) as u32;
    }
    if let [last] = chunks.remainder() {
        acc = fold(acc + ((*last as u32) << 8)) as u32;
    }
    acc
}

/// Full checksum over `data` with an initial partial sum (e.g. a pseudo-header).
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    !fold(fold(initial) as u32 + sum(data))
}

#[cfg(test)]
mod tests;
