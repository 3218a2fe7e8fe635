//! The flow hash: which slot of a colour's consistent-hashing table a flow falls in. Bob
//! Jenkins' lookup3 `hashword` over the flow's words, with a fixed seed, so every edge host
//! computes the same hash for the same flow (and, with the same pool, sends it to the same
//! node). Little-endian words, so the result does not depend on the host's byte order.

use crate::{FlowKey, POOL_TABLE_SIZE};

/// Fixed: every edge must agree.
const SEED: u32 = 0x5eed_0b1e;

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// lookup3 `hashword` of `k`.
#[inline(always)]
pub fn hash_words<const N: usize>(k: &[u32; N], seed: u32) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add((N as u32) << 2)
        .wrapping_add(seed);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut i = 0;
    while N - i > 3 {
        a = a.wrapping_add(k[i]);
        b = b.wrapping_add(k[i + 1]);
        c = c.wrapping_add(k[i + 2]);
        mix(&mut a, &mut b, &mut c);
        i += 3;
    }
    let left = N - i;
    if left == 0 {
        return c;
    }
    if left == 3 {
        c = c.wrapping_add(k[i + 2]);
    }
    if left >= 2 {
        b = b.wrapping_add(k[i + 1]);
    }
    a = a.wrapping_add(k[i]);
    finish(&mut a, &mut b, &mut c);
    c
}

/// The hash of a flow (client address and port towards the VIP and port, protocol). An IPv4
/// flow hashes its four meaningful words only (the rest of its key is zeros): one lookup3
/// round instead of three, on every UDP packet a pool's table steers.
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let ports = u32::from_le_bytes({
        let s = k.sport_be.to_ne_bytes();
        let d = k.dport_be.to_ne_bytes();
        [s[0], s[1], d[0], d[1]]
    });
    let kind = u32::from(k.proto) | (u32::from(k.family) << 8);
    if k.family == crate::FAMILY_V4 {
        return hash_words(&[word(&k.src, 0), word(&k.dst, 0), ports, kind], SEED);
    }
    let words = [
        word(&k.src, 0),
        word(&k.src, 4),
        word(&k.src, 8),
        word(&k.src, 12),
        word(&k.dst, 0),
        word(&k.dst, 4),
        word(&k.dst, 8),
        word(&k.dst, 12),
        ports,
        kind,
    ];
    hash_words(&words, SEED)
}

/// The table slot of a flow hash (the table size is a power of two).
#[inline(always)]
pub fn slot(hash: u32) -> usize {
    hash as usize & (POOL_TABLE_SIZE - 1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashSet;

    use super::*;

    /// The one value lookup3's description gives outright: no words, no mixing.
    #[test]
    fn empty_and_short_inputs_follow_the_algorithm() {
        // N = 0: c is returned unmixed.
        assert_eq!(hash_words::<0>(&[], 0), 0xdead_beef);
        assert_eq!(hash_words::<0>(&[], 1), 0xdead_bef0);
        // Different lengths and contents differ.
        let a = hash_words(&[1u32], 0);
        let b = hash_words(&[1u32, 0], 0);
        let c = hash_words(&[2u32], 0);
        assert!(a != b && a != c && b != c);
    }

    fn flow(src: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey::default();
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[198, 18, 10, 10]);
        k.sport_be = sport.to_be();
        k.dport_be = 514u16.to_be();
        k.proto = 17;
        k.family = 4;
        k
    }

    #[test]
    fn every_field_of_the_flow_matters() {
        let base = flow([198, 18, 0, 1], 40000);
        let h = flow_hash(&base);
        let mut other = base;
        other.sport_be = 40001u16.to_be();
        assert_ne!(flow_hash(&other), h);
        let mut other = base;
        other.dport_be = 515u16.to_be();
        assert_ne!(flow_hash(&other), h);
        let mut other = base;
        other.src[3] = 2;
        assert_ne!(flow_hash(&other), h);
        let mut other = base;
        other.proto = 6;
        assert_ne!(flow_hash(&other), h);
        assert_eq!(flow_hash(&base), h, "deterministic");
    }

    #[test]
    fn ports_of_one_client_spread_evenly_over_the_table() {
        // 65536 source ports of one client: every slot is hit, and no slot far more often than
        // the average (64 per slot).
        let mut counts = [0u32; POOL_TABLE_SIZE];
        let mut seen = HashSet::new();
        for port in 0..=u16::MAX {
            let h = flow_hash(&flow([198, 18, 0, 1], port));
            seen.insert(h);
            counts[slot(h)] += 1;
        }
        assert!(seen.len() > 65_000, "few collisions: {}", seen.len());
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        assert!(min >= 30 && max <= 110, "slot counts from {min} to {max}");
    }
}
