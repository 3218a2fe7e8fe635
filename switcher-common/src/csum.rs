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

/// Sum of the replaced words: `~m + m'` for each change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    pub const fn new() -> Self {
        Self(0)
    }

    /// Records that 16-bit word `old` became `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        // Fold as we go so the accumulator can never overflow, whatever the number of words.
        self.0 = fold(self.0 + (!old) as u32 + new as u32) as u32;
    }

    /// Records that a 4-byte field (an IPv4 address) changed.
    #[inline(always)]
    pub fn bytes4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.word(
            u16::from_be_bytes([old[0], old[1]]),
            u16::from_be_bytes([new[0], new[1]]),
        );
        self.word(
            u16::from_be_bytes([old[2], old[3]]),
            u16::from_be_bytes([new[2], new[3]]),
        );
    }

    /// Records that a 16-byte field (an IPv6 address) changed.
    #[inline(always)]
    pub fn bytes16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        let mut i = 0;
        while i < 16 {
            self.word(
                u16::from_be_bytes([old[i], old[i + 1]]),
                u16::from_be_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
    }

    /// The checksum field after the recorded changes: `HC' = ~(~HC + ~m + m')`.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold((!check) as u32 + self.0)
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
mod tests {
    use super::*;

    // RFC 1071 section 3 example bytes: their ones'-complement sum is 0xddf2.
    #[test]
    fn rfc1071_example_sum() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(0, &data), !0xddf2);
    }

    fn ipv4_header(dst: [u8; 4], ttl: u8) -> [u8; 20] {
        let mut h = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, ttl, 0x06, 0x00, 0x00, 198, 18, 0, 1,
            dst[0], dst[1], dst[2], dst[3],
        ];
        let c = checksum(0, &h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn incremental_matches_full_recompute_for_ipv4_dst_and_ttl() {
        let before = ipv4_header([198, 18, 10, 10], 64);
        let after = ipv4_header([198, 18, 1, 2], 63);
        let mut d = Delta::new();
        d.bytes4(&[198, 18, 10, 10], &[198, 18, 1, 2]);
        d.word(u16::from_be_bytes([64, 6]), u16::from_be_bytes([63, 6]));
        let old = u16::from_be_bytes([before[10], before[11]]);
        assert_eq!(d.apply(old), u16::from_be_bytes([after[10], after[11]]));
        // A header with a correct checksum sums to 0xffff.
        assert_eq!(fold(sum(&after)), 0xffff);
    }

    #[test]
    fn incremental_matches_full_recompute_for_many_random_rewrites() {
        // Deterministic pseudo-random payloads, addresses and ports (xorshift).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut pkt = [0u8; 40];
            for b in pkt.iter_mut() {
                *b = next() as u8;
            }
            let mut new_addr = [0u8; 16];
            for b in new_addr.iter_mut() {
                *b = next() as u8;
            }
            let new_port = (next() as u16).to_be_bytes();
            let c0 = checksum(0, &pkt);
            let mut d = Delta::new();
            let mut old_addr = [0u8; 16];
            old_addr.copy_from_slice(&pkt[8..24]);
            d.bytes16(&old_addr, &new_addr);
            d.word(
                u16::from_be_bytes([pkt[2], pkt[3]]),
                u16::from_be_bytes(new_port),
            );
            pkt[8..24].copy_from_slice(&new_addr);
            pkt[2..4].copy_from_slice(&new_port);
            let full = checksum(0, &pkt);
            let inc = d.apply(c0);
            // 0x0000 and 0xffff are the same value in ones' complement; RFC 1624 eqn. 3
            // may yield either, and both verify.
            assert!(inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff));
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() {
        let mut d = Delta::new();
        d.word(0x1234, 0x5678);
        assert_eq!(d.apply_udp(0), 0);
        // Pick a checksum whose update lands on zero: ~(~c + ~0x1234 + 0x5678) == 0.
        let mut c = 1u16;
        while d.apply(c) != 0 {
            c = c.wrapping_add(1);
            assert_ne!(c, 0, "some checksum must update to zero");
        }
        assert_eq!(d.apply_udp(c), 0xffff);
    }
}
