//! What a rewrite may change, and the checks of an output against it: every byte but the
//! changed fields and their checksums equal, every checksum's residual kept.

use crate::checksum::{self, ones_eq};

use super::read::be16;

/// A field the rewrite changes, and exactly what it must become.
pub struct Change {
    pub at: usize,
    pub bytes: Vec<u8>,
    pub what: &'static str,
}

/// A checksum the rewrite may change: where, what it covers, what rule applies.
pub struct Sum {
    pub at: usize,
    pub what: &'static str,
    /// UDP: zero means "none" and stays zero; a non-zero value never becomes zero.
    pub udp: bool,
    /// Covers the whole message (an unfragmented transport segment, an IP header): a valid
    /// input must give a valid output.
    pub whole: bool,
    pub cover: Cover,
}

pub enum Cover {
    /// Bytes `[from, to)` of the packet.
    Bytes(usize, usize),
    /// A transport pseudo-header (addresses at `src`/`dst`, `len` bytes each) plus `[from, to)`.
    Pseudo {
        src: usize,
        dst: usize,
        alen: usize,
        proto: u8,
        from: usize,
        to: usize,
    },
    /// A quoted transport checksum: quoted addresses, protocol, the ports word pair and the
    /// checksum itself (the rest of the quoted segment is not here).
    Quoted {
        src: usize,
        dst: usize,
        alen: usize,
        proto: u8,
        ports: usize,
    },
}

impl Sum {
    fn residual(&self, p: &[u8]) -> u16 {
        match self.cover {
            Cover::Bytes(from, to) => checksum::sum(&[&p[from..to]]),
            Cover::Pseudo {
                src,
                dst,
                alen,
                proto,
                from,
                to,
            } => {
                let ph =
                    checksum::pseudo(&p[src..src + alen], &p[dst..dst + alen], proto, to - from);
                checksum::sum(&[&ph, &p[from..to]])
            }
            Cover::Quoted {
                src,
                dst,
                alen,
                proto,
                ports,
            } => checksum::sum(&[
                &p[src..src + alen],
                &p[dst..dst + alen],
                &[0, proto],
                &p[ports..ports + 4],
                &p[self.at..self.at + 2],
            ]),
        }
    }
}

/// Every byte equal to the input's but the changed fields (which must hold exactly their new
/// value) and the checksums (judged by [`check_sums`]).
pub fn check_bytes(inp: &[u8], out: &[u8], changes: &[Change], sums: &[Sum]) -> Result<(), String> {
    let mut want = inp.to_vec();
    for c in changes {
        want[c.at..c.at + c.bytes.len()].copy_from_slice(&c.bytes);
    }
    for i in 0..out.len() {
        if sums.iter().any(|s| i == s.at || i == s.at + 1) {
            continue;
        }
        if out[i] != want[i] {
            let field = changes
                .iter()
                .find(|c| (c.at..c.at + c.bytes.len()).contains(&i))
                .map_or("a byte no rewrite may touch", |c| c.what);
            return Err(format!(
                "byte {i} ({field}) is {:#04x}, want {:#04x}",
                out[i], want[i]
            ));
        }
    }
    Ok(())
}

pub fn check_sums(inp: &[u8], out: &[u8], sums: &[Sum]) -> Result<(), String> {
    for s in sums {
        let (before, after) = (be16(inp, s.at), be16(out, s.at));
        if s.udp && before == 0 {
            if after != 0 {
                return Err(format!("{}: zero (none) became {after:#06x}", s.what));
            }
            continue;
        }
        if s.udp && after == 0 {
            return Err(format!("{}: {before:#06x} became zero (none)", s.what));
        }
        let (r_in, r_out) = (s.residual(inp), s.residual(out));
        if !ones_eq(r_in, r_out) {
            return Err(format!(
                "{}: {before:#06x} -> {after:#06x} changes its residual {r_in:#06x} -> {r_out:#06x} \
                 (an incremental update keeps it)",
                s.what
            ));
        }
        if s.whole && r_in == 0xffff {
            // Valid before: equal to a from-scratch computation over the output.
            let mut zeroed = out.to_vec();
            zeroed[s.at..s.at + 2].fill(0);
            let mut scratch = !s.residual(&zeroed);
            if s.udp && scratch == 0 {
                scratch = 0xffff;
            }
            if !ones_eq(after, scratch) {
                return Err(format!(
                    "{}: {after:#06x}, recomputed from scratch {scratch:#06x}",
                    s.what
                ));
            }
        }
    }
    Ok(())
}
