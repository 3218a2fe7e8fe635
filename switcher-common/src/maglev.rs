//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the table that maps a flow hash to
//! a member of a colour's pool. Every member walks its own permutation of the table's slots
//! and members take turns claiming the next free slot of their permutation, so each gets
//! almost the same share, and when one leaves, mostly its own slots change hands. Members take
//! `weight` turns per round. The permutation of a member depends only on its address, and
//! members are visited in address order: every edge host builds the same table for the same
//! pool. Pure and allocation-free, so userspace builds tables and tests check them on the
//! host.

use crate::{hash::hash_words, MAX_MEMBERS, POOL_TABLE_SIZE};

/// One member as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Address (16 bytes, IPv4 in the first four) and port: what identifies a node.
    pub addr: [u8; 16],
    pub port: u16,
    /// Turns per round (0: gets no slot, e.g. out of service).
    pub weight: u8,
}

impl Member {
    fn words(&self) -> [u32; 5] {
        let w = |i: usize| {
            u32::from_le_bytes([
                self.addr[i],
                self.addr[i + 1],
                self.addr[i + 2],
                self.addr[i + 3],
            ])
        };
        [w(0), w(4), w(8), w(12), u32::from(self.port)]
    }

    /// (offset, skip) of this member's permutation: slot j of it is
    /// `(offset + j * skip) % POOL_TABLE_SIZE`. The table size is a power of two and `skip`
    /// odd, so the two are coprime and the permutation visits every slot.
    fn permutation(&self) -> (usize, usize) {
        let words = self.words();
        let offset = hash_words(&words, 0x6d61_676c) as usize % POOL_TABLE_SIZE;
        let skip = (hash_words(&words, 0x6576_2121) as usize % (POOL_TABLE_SIZE / 2)) * 2 + 1;
        (offset, skip)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    TooManyMembers,
    /// No member has a positive weight: nothing to send flows to.
    NoMemberInService,
}

/// Fills `table` for `members` (at most [`MAX_MEMBERS`]): `table[slot]` is an index into
/// `members`. The order of `members` is the pool's order (indexes stay as given); the result
/// does not depend on it.
pub fn build(members: &[Member], table: &mut [u8; POOL_TABLE_SIZE]) -> Result<(), TableError> {
    if members.len() > MAX_MEMBERS {
        return Err(TableError::TooManyMembers);
    }
    // Visiting order: by address, so the table does not depend on the pool's order.
    let mut order = [0usize; MAX_MEMBERS];
    let n = members.len();
    for (i, o) in order.iter_mut().enumerate().take(n) {
        *o = i;
    }
    order[..n].sort_unstable_by_key(|&i| (members[i].addr, members[i].port));
    if !members.iter().any(|m| m.weight > 0) {
        return Err(TableError::NoMemberInService);
    }
    let mut perm = [(0usize, 0usize); MAX_MEMBERS];
    for (i, m) in members.iter().enumerate() {
        perm[i] = m.permutation();
    }
    let mut next = [0usize; MAX_MEMBERS];
    let mut taken = [false; POOL_TABLE_SIZE];
    let mut filled = 0;
    while filled < POOL_TABLE_SIZE {
        for &i in &order[..n] {
            for _ in 0..members[i].weight {
                // The next slot of member i's permutation that is still free.
                let (offset, skip) = perm[i];
                let mut s = (offset + next[i] * skip) % POOL_TABLE_SIZE;
                while taken[s] {
                    next[i] += 1;
                    s = (offset + next[i] * skip) % POOL_TABLE_SIZE;
                }
                taken[s] = true;
                table[s] = i as u8;
                next[i] += 1;
                filled += 1;
                if filled == POOL_TABLE_SIZE {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Takes the members marked in `out` out of a built table without disturbing anyone else:
/// each of their slots goes to the remaining member that ranks it highest (rendezvous
/// hashing: a member of weight w draws w times). Only the leavers' flows move, exactly, and
/// putting them back (the table built again) returns each slot to its owner. Used for health
/// (a member that comes and goes); a member removed from the pool for good rebuilds the
/// table instead. Deterministic from the members and `out`: every edge computes the same.
pub fn exclude(
    members: &[Member],
    out: &[bool],
    table: &mut [u8; POOL_TABLE_SIZE],
) -> Result<(), TableError> {
    let n = members.len().min(out.len());
    if !(0..n).any(|i| !out[i] && members[i].weight > 0) {
        return Err(TableError::NoMemberInService);
    }
    for (slot, owner) in table.iter_mut().enumerate() {
        let o = *owner as usize;
        if o >= n || !out[o] {
            continue;
        }
        let mut best: Option<(u32, usize)> = None;
        for i in (0..n).filter(|&i| !out[i]) {
            let w = members[i].words();
            for k in 0..u32::from(members[i].weight) {
                let score =
                    hash_words(&[w[0], w[1], w[2], w[3], w[4], slot as u32, k], 0x7265_6e64);
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, i));
                }
            }
        }
        if let Some((_, i)) = best {
            *owner = i as u8;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn member(last: u8, weight: u8) -> Member {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 1, last]);
        Member {
            addr,
            port: 514,
            weight,
        }
    }

    fn shares(table: &[u8; POOL_TABLE_SIZE], n: usize) -> Vec<usize> {
        let mut c = std::vec![0usize; n];
        for &i in table.iter() {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn every_slot_goes_to_a_member_and_shares_are_even() {
        for n in [1usize, 2, 3, 8, 64] {
            let members: Vec<Member> = (0..n).map(|i| member(i as u8 + 2, 1)).collect();
            let mut t = [u8::MAX; POOL_TABLE_SIZE];
            assert_eq!(build(&members, &mut t), Ok(()));
            let c = shares(&t, n);
            let (min, max) = (c.iter().min().copied(), c.iter().max().copied());
            // Maglev's round robin gives every member floor or ceil of M/N slots.
            let fair = POOL_TABLE_SIZE / n;
            assert!(
                min >= Some(fair) && max <= Some(fair + 1),
                "{n} members: {min:?}..{max:?}"
            );
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let members = [member(2, 1), member(3, 2), member(4, 1)];
        let mut t = [0; POOL_TABLE_SIZE];
        assert_eq!(build(&members, &mut t), Ok(()));
        let c = shares(&t, 3);
        assert!(c[1] >= 2 * c[0] - 2 && c[1] <= 2 * c[0] + 2, "{c:?}");
        // Weight 0: no slot, but the other indexes stay.
        let members = [member(2, 1), member(3, 0), member(4, 1)];
        assert_eq!(build(&members, &mut t), Ok(()));
        assert_eq!(shares(&t, 3)[1], 0);
        let none = [member(2, 0)];
        assert_eq!(build(&none, &mut t), Err(TableError::NoMemberInService));
    }

    #[test]
    fn the_table_does_not_depend_on_the_pools_order() {
        let a = [member(2, 1), member(3, 1), member(4, 1)];
        let b = [member(4, 1), member(2, 1), member(3, 1)];
        let (mut ta, mut tb) = ([0; POOL_TABLE_SIZE], [0; POOL_TABLE_SIZE]);
        assert_eq!(build(&a, &mut ta), Ok(()));
        assert_eq!(build(&b, &mut tb), Ok(()));
        // Same node for every slot, whatever its index in each pool.
        for s in 0..POOL_TABLE_SIZE {
            assert_eq!(a[ta[s] as usize], b[tb[s] as usize]);
        }
    }

    #[test]
    fn excluding_a_member_moves_exactly_its_slots_and_spreads_them() {
        let eight: Vec<Member> = (0..8).map(|i| member(i + 2, 1)).collect();
        let mut base = [0; POOL_TABLE_SIZE];
        assert_eq!(build(&eight, &mut base), Ok(()));
        let mut out = [false; 8];
        out[5] = true;
        let mut t = base;
        assert_eq!(exclude(&eight, &out, &mut t), Ok(()));
        let own = base.iter().filter(|&&i| i == 5).count();
        let moved = (0..POOL_TABLE_SIZE).filter(|&s| base[s] != t[s]).count();
        assert_eq!(moved, own, "only the leaver's slots change hands");
        assert!(t.iter().all(|&i| i != 5));
        // Spread over the other seven: none takes more than a third of them.
        let c = shares(&t, 8);
        let gained: Vec<usize> = (0..8)
            .filter(|&i| i != 5)
            .map(|i| c[i] - shares(&base, 8)[i])
            .collect();
        assert!(gained.iter().all(|&g| g * 3 <= own), "{gained:?} of {own}");
        // Independent of the pool's order, like the table itself.
        let mut rev = eight.clone();
        rev.reverse();
        let mut rt = [0; POOL_TABLE_SIZE];
        assert_eq!(build(&rev, &mut rt), Ok(()));
        let mut rout = [false; 8];
        rout[2] = true;
        assert_eq!(exclude(&rev, &rout, &mut rt), Ok(()));
        for s in 0..POOL_TABLE_SIZE {
            assert_eq!(eight[t[s] as usize], rev[rt[s] as usize]);
        }
        assert_eq!(
            exclude(&eight, &[true; 8], &mut t),
            Err(TableError::NoMemberInService)
        );
    }

    #[test]
    fn a_member_leaving_moves_little_more_than_its_own_share() {
        let eight: Vec<Member> = (0..8).map(|i| member(i + 2, 1)).collect();
        let mut before = [0; POOL_TABLE_SIZE];
        assert_eq!(build(&eight, &mut before), Ok(()));
        // Member 5 out of service: its weight 0, indexes unchanged.
        let mut seven = eight.clone();
        seven[5].weight = 0;
        let mut after = [0; POOL_TABLE_SIZE];
        assert_eq!(build(&seven, &mut after), Ok(()));
        let own = before.iter().filter(|&&i| i == 5).count();
        let moved = (0..POOL_TABLE_SIZE)
            .filter(|&s| before[s] != after[s])
            .count();
        assert!(after.iter().all(|&i| i != 5));
        // Ideal: exactly its own ~1/8. Maglev moves a little more.
        assert!(moved >= own, "{moved} < {own}");
        assert!(
            moved * 100 <= POOL_TABLE_SIZE * 20,
            "{moved} of {POOL_TABLE_SIZE} slots moved (own share {own})"
        );
        assert_eq!(
            build(&[member(2, 1); 65], &mut after),
            Err(TableError::TooManyMembers)
        );
    }
}
