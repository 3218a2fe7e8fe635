//! Property tests of the steering decisions (README "Datapath rules"): whatever packets,
//! flags, times and colour states arrive, an established TCP connection keeps its colour and
//! member until a SYN reuses its closed tuple; a SYN without an entry goes to the colour new
//! flows get; a packet without any entry follows the drain rule; UDP affinity holds exactly
//! while its epoch, idle time and maximum age allow; a backend's reset counts only for a
//! connection that carried data or never completed.

mod common;

use common::config;
use proptest::prelude::*;
use switcher_common::{
    decide::{
        decide_tcp, decide_udp, in_canary, reset_counts, Affinity, ColorState, Decision, Op,
        Source, TcpEntries, TcpFlags, TOUCH_NS,
    },
    ActiveWord, Backend, FlipMark, FlowValue, FLOW_CLOSING, FLOW_F_DATA, FLOW_OPEN,
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

fn color_state() -> impl Strategy<Value = ColorState> {
    (0u8..2, prop::option::of(0u8..2), any::<bool>()).prop_map(|(active, draining, canary)| {
        ColorState {
            active,
            draining,
            canary,
        }
    })
}

/// An entry as a table holds it; the member is named by its counter slot.
fn entry() -> impl Strategy<Value = FlowValue> {
    (
        0u8..2,
        prop_oneof![Just(FLOW_OPEN), Just(FLOW_CLOSING)],
        prop_oneof![Just(0), Just(FLOW_F_DATA)],
        0u64..200_000_000_000,
        0u64..200_000_000_000,
        0u32..4,
        any::<u16>(),
    )
        .prop_map(
            |(color, state, flags, last_seen_ns, created_ns, epoch, slot)| FlowValue {
                color,
                state,
                flags,
                last_seen_ns,
                created_ns,
                epoch,
                backend: Backend {
                    slot,
                    valid: 1,
                    ..Backend::default()
                },
                ..FlowValue::default()
            },
        )
}

/// TCP flag bytes, with the interesting combinations often.
fn flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(SYN),
        Just(SYN | ACK),
        Just(ACK),
        Just(FIN | ACK),
        Just(RST),
        Just(RST | ACK),
        any::<u8>(),
    ]
}

fn opening(f: u8) -> bool {
    f & SYN != 0 && f & ACK == 0
}

fn closing(f: u8) -> bool {
    f & (FIN | RST) != 0
}

fn stale(e: &FlowValue, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) > TOUCH_NS
}

fn new_connection(d: &Decision, st: &ColorState) -> bool {
    d.source == Source::Pick
        && d.color == st.new_flow_color()
        && d.half == Op::Put
        && d.new_flow
        && !d.pin_miss
        && d.state == FLOW_OPEN
}

proptest! {
    #![proptest_config(config(5000))]

    /// An established entry decides, whatever else the tables hold: same colour, same member
    /// (the entry's), only the entry itself is touched, and only to record closing (or data
    /// reopening it), data, or the idle clock. The one exception: a SYN on a closing entry
    /// starts a new connection.
    #[test]
    fn established_entry_never_changes_colour_or_member(
        f in flags(),
        payload in any::<bool>(),
        e in entry(),
        other in prop::option::of(entry()),
        st in color_state(),
        now in 0u64..200_000_000_000,
    ) {
        let found = TcpEntries {
            established: Some(&e),
            half_open: other.as_ref(),
            soft: other.as_ref(),
        };
        let d = decide_tcp(TcpFlags::from_byte(f), payload, found, &st, now);
        if opening(f) && e.state == FLOW_CLOSING {
            prop_assert!(new_connection(&d, &st), "{d:?}");
            prop_assert_eq!((d.est, d.soft), (Op::Delete, Op::Keep));
            return Ok(());
        }
        prop_assert_eq!(d.source, Source::Established);
        prop_assert_eq!(d.color, e.color);
        prop_assert_eq!((d.half, d.soft), (Op::Keep, Op::Keep));
        prop_assert!(!d.new_flow && !d.pin_miss);
        // Data without FIN or RST reopens a closing entry (the connection lives).
        let state = if closing(f) {
            FLOW_CLOSING
        } else if payload && e.state == FLOW_CLOSING {
            FLOW_OPEN
        } else {
            e.state
        };
        let fl = e.flags | if payload { FLOW_F_DATA } else { 0 };
        let must_write = state != e.state || fl != e.flags;
        let may_write = must_write || (e.state == FLOW_OPEN && stale(&e, now));
        prop_assert_eq!(d.est == Op::Put, may_write, "{:?}", d);
        if d.est == Op::Put {
            prop_assert_eq!((d.state, d.flags), (state, fl));
        }
    }

    /// A SYN with no entry anywhere: the colour new flows get (the canary's when it falls in
    /// the share), recorded half-open only.
    #[test]
    fn a_syn_without_entry_goes_to_the_new_flow_colour(
        ack_bits in prop_oneof![Just(0u8), Just(0x08), Just(0x20)],
        payload in any::<bool>(),
        st in color_state(),
        now in any::<u64>(),
    ) {
        let f = TcpFlags::from_byte(SYN | ack_bits);
        let d = decide_tcp(f, payload, TcpEntries::default(), &st, now);
        prop_assert!(new_connection(&d, &st), "{d:?}");
        prop_assert_eq!((d.est, d.soft), (Op::Keep, Op::Keep));
        prop_assert_eq!(d.color, if st.canary { st.active ^ 1 } else { st.active });
    }

    /// Any other packet without an entry: the draining colour while it drains, else the active
    /// one (never the canary's); recorded in the soft table and counted as a pin miss.
    #[test]
    fn a_packet_without_entry_follows_the_drain_rule(
        f in flags().prop_filter("not opening", |f| !opening(*f)),
        payload in any::<bool>(),
        st in color_state(),
        now in any::<u64>(),
    ) {
        let d = decide_tcp(TcpFlags::from_byte(f), payload, TcpEntries::default(), &st, now);
        prop_assert_eq!(d.source, Source::Pick);
        prop_assert_eq!(d.color, st.draining.unwrap_or(st.active));
        prop_assert_eq!((d.est, d.half, d.soft), (Op::Keep, Op::Keep, Op::Put));
        prop_assert!(d.pin_miss && !d.new_flow);
        prop_assert_eq!(d.state, if closing(f) { FLOW_CLOSING } else { FLOW_OPEN });
    }

    /// Half-open: a SYN (retransmission) keeps it; anything else completes (or aborts) the
    /// handshake and moves the connection, same colour and member, to the established table.
    #[test]
    fn a_half_open_entry_keeps_its_member_and_moves_on_completion(
        f in flags(),
        payload in any::<bool>(),
        h in entry(),
        soft in prop::option::of(entry()),
        st in color_state(),
        now in any::<u64>(),
    ) {
        let found = TcpEntries { established: None, half_open: Some(&h), soft: soft.as_ref() };
        let d = decide_tcp(TcpFlags::from_byte(f), payload, found, &st, now);
        prop_assert_eq!((d.source, d.color), (Source::HalfOpen, h.color));
        prop_assert!(!d.new_flow && !d.pin_miss);
        prop_assert_eq!(d.soft, Op::Keep);
        if opening(f) {
            prop_assert_eq!((d.est, d.half), (Op::Keep, Op::Keep));
        } else {
            prop_assert_eq!((d.est, d.half), (Op::Put, Op::Delete));
            prop_assert_eq!(d.state, if closing(f) { FLOW_CLOSING } else { FLOW_OPEN });
            let data = if payload { FLOW_F_DATA } else { 0 };
            prop_assert_eq!(d.flags, h.flags | data);
        }
    }

    /// A soft TCP entry (made by a pin miss) keeps its colour for the connection's packets; a
    /// SYN replaces it with a new connection.
    #[test]
    fn a_soft_tcp_entry_keeps_its_colour_until_a_syn(
        f in flags(),
        payload in any::<bool>(),
        s in entry(),
        st in color_state(),
        now in any::<u64>(),
    ) {
        let found = TcpEntries { established: None, half_open: None, soft: Some(&s) };
        let d = decide_tcp(TcpFlags::from_byte(f), payload, found, &st, now);
        if opening(f) {
            prop_assert!(new_connection(&d, &st), "{d:?}");
            prop_assert_eq!((d.est, d.soft), (Op::Keep, Op::Delete));
        } else {
            prop_assert_eq!((d.source, d.color), (Source::Soft, s.color));
            prop_assert_eq!((d.est, d.half), (Op::Keep, Op::Keep));
            prop_assert!(!d.new_flow && !d.pin_miss);
            let write = (closing(f) && s.state != FLOW_CLOSING) || stale(&s, now);
            prop_assert_eq!(d.soft == Op::Put, write);
        }
    }

    /// UDP without affinity: the colour new flows get, no table touched, no new flow counted.
    #[test]
    fn udp_without_affinity_is_stateless(
        e in prop::option::of(entry()),
        st in color_state(),
        now in any::<u64>(),
    ) {
        let d = decide_udp(None, e.as_ref(), &st, now);
        prop_assert_eq!((d.source, d.color), (Source::Pick, st.new_flow_color()));
        prop_assert_eq!((d.est, d.half, d.soft), (Op::Keep, Op::Keep, Op::Keep));
        prop_assert!(!d.new_flow && !d.pin_miss);
    }

    /// UDP affinity: an entry holds exactly while its epoch is the service's, it was seen
    /// within the idle time, and it is on the active colour or younger than the maximum age.
    /// Otherwise the flow is assigned anew (and recorded, and counted as a new flow).
    #[test]
    fn udp_affinity_respects_epoch_idle_and_max_age(
        e in prop::option::of(entry()),
        idle_ns in 0u64..100_000_000_000,
        max_age_ns in 0u64..100_000_000_000,
        epoch in 0u32..4,
        st in color_state(),
        now in 0u64..250_000_000_000,
    ) {
        let a = Affinity { idle_ns, max_age_ns, epoch };
        let d = decide_udp(Some(&a), e.as_ref(), &st, now);
        let holds = e.is_some_and(|e| {
            e.epoch == epoch
                && now.saturating_sub(e.last_seen_ns) <= idle_ns
                && (e.color == st.active || now.saturating_sub(e.created_ns) <= max_age_ns)
        });
        prop_assert_eq!((d.est, d.half), (Op::Keep, Op::Keep));
        prop_assert!(!d.pin_miss);
        if holds {
            let e = e.expect("holds");
            prop_assert_eq!((d.source, d.color), (Source::Soft, e.color));
            prop_assert!(!d.new_flow);
            prop_assert_eq!(d.soft == Op::Put, stale(&e, now));
        } else {
            prop_assert_eq!((d.source, d.color), (Source::Pick, st.new_flow_color()));
            prop_assert_eq!(d.soft, Op::Put);
            prop_assert!(d.new_flow);
        }
    }

    /// The drain window: the previous colour drains exactly while the flip mark belongs to
    /// the active word's generation, was written, and is younger than the drain time.
    #[test]
    fn draining_lasts_exactly_the_drain_window(
        color in 0u8..2,
        generation in 0u32..0x00ff_ffff,
        mark_generation in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        flip_ns in prop_oneof![Just(0u64), 1u64..1_000_000_000_000],
        drain_ns in prop_oneof![Just(0u64), 0u64..100_000_000_000, Just(u64::MAX)],
        now in 0u64..2_000_000_000_000,
    ) {
        let active = ActiveWord::new(color, generation);
        let mark = FlipMark {
            generation: mark_generation.unwrap_or(generation),
            flip_ns,
            ..FlipMark::default()
        };
        let st = ColorState::new(active, &mark, drain_ns, now);
        let drains = mark.generation == generation
            && flip_ns != 0
            && u128::from(now) < u128::from(flip_ns) + u128::from(drain_ns);
        prop_assert_eq!(st.active, color);
        prop_assert_eq!(st.draining, drains.then_some(color ^ 1));
        prop_assert!(!st.canary);
        prop_assert_eq!(st.new_flow_color(), color);
    }

    /// The canary share is a share of 65536: only the random value's low 16 bits decide, 0 is
    /// never, 65536 and above always, and it grows with the share.
    #[test]
    fn canary_share_is_monotone_in_1_over_65536(share in 0u32..70_000, random in any::<u32>()) {
        prop_assert_eq!(in_canary(share, random), in_canary(share, random & 0xffff));
        prop_assert_eq!(in_canary(share, random), share != 0 && (random & 0xffff) < share);
        if in_canary(share, random) {
            prop_assert!(in_canary(share.saturating_add(1), random));
        }
    }

    /// A backend's reset says something about it only for a connection that carried data, or
    /// one that never completed its handshake (refused); a reset of anything else does not.
    #[test]
    fn resets_count_for_data_or_refused_connections(
        flags in prop::option::of(any::<u8>()),
        half_open in any::<bool>(),
    ) {
        let counts = reset_counts(flags, half_open);
        match flags {
            Some(f) => prop_assert_eq!(counts, f & FLOW_F_DATA != 0),
            None => prop_assert_eq!(counts, half_open),
        }
    }
}

proptest! {
    // Sequences are costlier to generate: fewer cases, each up to 60 packets long.
    #![proptest_config(config(600))]

    /// A connection through any sequence of packets, flips, drains and canary shares, against
    /// a model of the three tables: from its first packet after the SYN on, every packet goes
    /// to the member the SYN got, until a SYN arrives on its closed tuple.
    #[test]
    fn a_connection_keeps_its_member_through_anything(
        steps in prop::collection::vec(
            (flags(), any::<bool>(), 0u64..3_000_000_000, color_state()),
            1..60,
        ),
    ) {
        let mut tables: [Option<FlowValue>; 3] = [None, None, None];
        let mut now = 1_000_000_000_000u64;
        let mut next_member = 0u16;
        // The member the connection was given, while it lives.
        let mut pinned: Option<(u8, u16)> = None;
        for (f, payload, dt, st) in steps {
            now += dt;
            let [est, half, soft] = tables;
            let found = TcpEntries {
                established: est.as_ref(),
                half_open: half.as_ref(),
                soft: soft.as_ref(),
            };
            let d = decide_tcp(TcpFlags::from_byte(f), payload, found, &st, now);
            let entry = est.or(half).or(soft);
            let member = if d.source == Source::Pick {
                next_member += 1;
                next_member
            } else {
                let e = entry.expect("an entry decided");
                prop_assert_eq!(d.color, e.color);
                e.backend.slot
            };
            let reused = opening(f) && est.is_some_and(|e| e.state == FLOW_CLOSING);
            if let Some(p) = pinned {
                if est.is_some() && !reused {
                    prop_assert_eq!((d.color, member), p, "an established connection moved");
                }
            }
            // Apply the decision as ingress does.
            let put = FlowValue {
                color: d.color,
                state: d.state,
                flags: d.flags,
                last_seen_ns: now,
                created_ns: if d.source == Source::Pick {
                    now
                } else {
                    entry.map_or(now, |e| e.created_ns)
                },
                backend: Backend {
                    slot: member,
                    valid: 1,
                    ..Backend::default()
                },
                ..FlowValue::default()
            };
            for (table, op) in tables.iter_mut().zip([d.est, d.half, d.soft]) {
                match op {
                    Op::Put => *table = Some(put),
                    Op::Delete => *table = None,
                    Op::Keep => {}
                }
            }
            // Established from the packet that completes a handshake on.
            if tables[0].is_some() && (pinned.is_none() || reused) {
                let e = tables[0].expect("established");
                pinned = Some((e.color, e.backend.slot));
            }
            if tables[0].is_none() {
                pinned = None;
            }
            // Never in two tables at once after a packet that started a connection.
            if d.new_flow {
                prop_assert!(tables[0].is_none() && tables[2].is_none(), "{tables:?}");
            }
        }
    }
}

#[test]
fn canary_share_over_a_full_cycle_is_exact() {
    for share in [0u32, 1, 6554, 32768, 65535, 65536, 100_000] {
        let hits = (0..=0xffffu32).filter(|&r| in_canary(share, r)).count() as u32;
        assert_eq!(hits, share.min(65536), "share {share}");
    }
}
