//! Property tests of the Maglev table: every slot goes to a member in service, weights give
//! proportional shares (to the slot), the table depends on the pool's members and not their
//! order, taking a member out of service equals removing it, and removing one member of N
//! moves few slots besides its own.

use std::collections::BTreeSet;

mod common;

use common::config;
use proptest::prelude::*;
use switcher_common::{
    maglev::{build, Member, TableError},
    MAX_MEMBERS, POOL_TABLE_SIZE,
};

const M: usize = POOL_TABLE_SIZE;

/// 1..=64 members with distinct (address, port), IPv4 or IPv6.
fn pool(weights: impl Strategy<Value = u8> + Clone) -> impl Strategy<Value = Vec<Member>> {
    prop::collection::btree_set(
        (any::<[u8; 16]>(), any::<bool>(), any::<u16>()),
        1..=MAX_MEMBERS,
    )
    .prop_flat_map(move |ids| {
        let n = ids.len();
        (Just(ids), prop::collection::vec(weights.clone(), n))
    })
    .prop_map(|(ids, weights)| {
        // Zeroing an IPv4 address's tail can make two identities one: the first is kept.
        let mut seen = BTreeSet::new();
        ids.into_iter()
            .zip(weights)
            .map(|((mut addr, v4, port), weight)| {
                if v4 {
                    addr[4..].fill(0);
                }
                Member { addr, port, weight }
            })
            .filter(|m| seen.insert((m.addr, m.port)))
            .collect()
    })
}

fn table(members: &[Member]) -> Result<[u8; M], TableError> {
    let mut t = [u8::MAX; M];
    build(members, &mut t).map(|()| t)
}

/// Which member (by identity) each slot sends flows to.
fn owners(members: &[Member], t: &[u8; M]) -> Vec<(Member, usize)> {
    t.iter()
        .enumerate()
        .map(|(s, &i)| (members[i as usize], s))
        .collect()
}

fn same_node(a: &Member, b: &Member) -> bool {
    (a.addr, a.port) == (b.addr, b.port)
}

proptest! {
    #![proptest_config(config(300))]

    /// Every slot names a member in service; shares follow the weights to the slot: after
    /// R = M / W complete rounds (W the sum of weights), a member of weight w holds between
    /// R*w and (R+1)*w slots.
    #[test]
    fn weights_are_respected(members in pool(prop_oneof![3 => Just(1u8), 1 => 0u8..=8])) {
        let total: usize = members.iter().map(|m| m.weight as usize).sum();
        let t = match table(&members) {
            Err(TableError::NoMemberInService) => {
                prop_assert_eq!(total, 0);
                return Ok(());
            }
            other => other.map_err(|e| TestCaseError::fail(format!("{e:?}")))?,
        };
        let mut counts = vec![0usize; members.len()];
        for &i in t.iter() {
            prop_assert!((i as usize) < members.len());
            counts[i as usize] += 1;
        }
        let rounds = M / total;
        for (m, &c) in members.iter().zip(&counts) {
            let w = m.weight as usize;
            prop_assert!(
                c >= rounds * w && c <= (rounds + 1) * w,
                "weight {} got {} slots ({} rounds of {})", w, c, rounds, total
            );
            // And so within one weight's worth of its exact share.
            let exact = M as f64 * w as f64 / total as f64;
            prop_assert!((c as f64 - exact).abs() <= w as f64, "{} vs {}", c, exact);
        }
    }

    /// The same members in another order give the same node for every slot.
    #[test]
    fn the_table_does_not_depend_on_the_pools_order(
        members in pool(1u8..=3),
        seed in any::<u64>(),
    ) {
        let mut shuffled = members.clone();
        // A deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let (a, b) = (table(&members).expect("table"), table(&shuffled).expect("table"));
        for s in 0..M {
            prop_assert!(same_node(&members[a[s] as usize], &shuffled[b[s] as usize]));
        }
    }

    /// Removing one member of N (from the pool, or by weight 0, which is the same): its slots
    /// all go to others, and the other members lose few of theirs. Maglev is not minimal: with
    /// this table (1024 slots) the measured mean over 5000 random pools is 1.0x the removed
    /// member's own share moved for 2-4 members, 1.2x for 8, 1.5x for 16, 2.3x for 32 and
    /// 4x for 64 (16 slots each); the worst case seen stays under twice its own share plus an
    /// eighth of the table, which is the bound here.
    #[test]
    fn removing_a_member_moves_little_more_than_its_share(
        members in pool(Just(1u8)).prop_filter("two or more", |m| m.len() >= 2),
        which in any::<prop::sample::Index>(),
    ) {
        let gone = which.index(members.len());
        let before = table(&members).expect("table");
        let rest: Vec<Member> = members
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != gone)
            .map(|(_, m)| *m)
            .collect();
        let after = table(&rest).expect("table");
        let mut out_of_service = members.clone();
        out_of_service[gone].weight = 0;
        let zeroed = table(&out_of_service).expect("table");
        let own = before.iter().filter(|&&i| i as usize == gone).count();
        let mut moved = 0;
        for ((m0, s), (m1, _)) in owners(&members, &before).iter().zip(owners(&rest, &after)) {
            prop_assert!(same_node(&m1, &out_of_service[zeroed[*s] as usize]));
            prop_assert!(!same_node(&m1, &members[gone]));
            if !same_node(m0, &m1) {
                moved += 1;
            }
        }
        prop_assert!(moved >= own);
        prop_assert!(
            moved <= 2 * own + M / 8,
            "{} of {} slots moved for a member holding {} ({} members)",
            moved, M, own, members.len()
        );
    }
}

/// On average (fixed pools, so the numbers are reproducible) a removal moves about the
/// removed member's own share for small pools, and never more than a few times it.
#[test]
fn mean_disruption_of_a_removal_is_close_to_one_share_for_small_pools() {
    let mut x = 0x5eed_1234_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (n, bound) in [(2usize, 1.01), (4, 1.1), (8, 1.3), (16, 1.7), (64, 4.5)] {
        let mut ratio = 0.0;
        let trials = 200;
        for _ in 0..trials {
            let members: Vec<Member> = (0..n)
                .map(|i| {
                    let mut addr = [0u8; 16];
                    addr[..8].copy_from_slice(&next().to_le_bytes());
                    addr[15] = i as u8;
                    Member {
                        addr,
                        port: 514,
                        weight: 1,
                    }
                })
                .collect();
            let gone = next() as usize % n;
            let rest: Vec<Member> = members
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, m)| *m)
                .collect();
            let (a, b) = (
                table(&members).expect("table"),
                table(&rest).expect("table"),
            );
            let own = a.iter().filter(|&&i| i as usize == gone).count();
            let moved = (0..M)
                .filter(|&s| !same_node(&members[a[s] as usize], &rest[b[s] as usize]))
                .count();
            ratio += moved as f64 / own as f64;
        }
        let mean = ratio / trials as f64;
        assert!(
            mean <= bound,
            "{n} members: mean {mean:.2}x own share moved"
        );
    }
}
