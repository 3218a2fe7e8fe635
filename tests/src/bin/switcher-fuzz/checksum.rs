//! RFC 1071 from scratch, independent of switcher-common's `csum`: the oracle judges the
//! datapath's incremental updates with it, and the generator uses it to give packets valid
//! checksums. Checked against etherparse's own checksums at start (`main::self_test`).

/// Ones'-complement sum of 16-bit big-endian words (an odd last byte padded with zero),
/// folded. 0xffff is the sum of data whose checksum is valid (ones'-complement zero).
pub fn sum(parts: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in part.iter() {
            match odd.take() {
                Some(hi) => acc += u64::from(hi) << 8 | u64::from(b),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        acc += u64::from(hi) << 8;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value that makes `parts` (with the field zeroed) sum to 0xffff.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    !sum(parts)
}

/// Equal as ones'-complement numbers: 0x0000 and 0xffff are both zero.
pub fn ones_eq(a: u16, b: u16) -> bool {
    a % 0xffff == b % 0xffff
}

/// The transport pseudo-header: addresses, protocol and upper-layer length (RFC 768/793 for
/// IPv4, RFC 8200 8.1 for IPv6). Its length word is identical before and after any rewrite,
/// so the residuals the oracle compares do not depend on it.
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(src);
    v.extend_from_slice(dst);
    if src.len() == 4 {
        v.extend([0, proto]);
        v.extend((len as u16).to_be_bytes());
    } else {
        v.extend((len as u32).to_be_bytes());
        v.extend([0, 0, 0, proto]);
    }
    v
}
