//! The steering rules, case by case: what each packet finds and what it must leave behind.

use super::*;
use crate::{BLUE, GREEN};

const SYN: TcpFlags = TcpFlags::from_byte(0x02);
const SYNACK: TcpFlags = TcpFlags::from_byte(0x12);
const ACK: TcpFlags = TcpFlags::from_byte(0x10);
const FIN_ACK: TcpFlags = TcpFlags::from_byte(0x11);
const RST: TcpFlags = TcpFlags::from_byte(0x04);
const NOW: u64 = 100_000_000_000;

fn st(active: u8, draining: Option<u8>) -> ColorState {
    ColorState {
        active,
        draining,
        canary: false,
    }
}

fn entry(color: u8, state: u8, last_seen_ns: u64) -> FlowValue {
    FlowValue {
        color,
        state,
        last_seen_ns,
        created_ns: last_seen_ns,
        ..Default::default()
    }
}

fn est(e: &FlowValue) -> TcpEntries<'_> {
    TcpEntries {
        established: Some(e),
        ..Default::default()
    }
}

fn half(e: &FlowValue) -> TcpEntries<'_> {
    TcpEntries {
        half_open: Some(e),
        ..Default::default()
    }
}

fn soft(e: &FlowValue) -> TcpEntries<'_> {
    TcpEntries {
        soft: Some(e),
        ..Default::default()
    }
}

const NONE: TcpEntries<'static> = TcpEntries {
    established: None,
    half_open: None,
    soft: None,
};

#[test]
fn a_syn_picks_the_active_colour_and_is_recorded_half_open_only() {
    let d = decide_tcp(SYN, false, NONE, &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color), (Source::Pick, GREEN));
    assert_eq!((d.est, d.half, d.soft), (Op::Keep, Op::Put, Op::Keep));
    assert!(d.new_flow && !d.pin_miss);
    assert_eq!(d.state, FLOW_OPEN);
}

#[test]
fn the_handshake_completing_moves_the_flow_to_the_protected_table() {
    let h = entry(BLUE, FLOW_OPEN, NOW - 5);
    // SYN retransmission: still half-open, same member.
    let d = decide_tcp(SYN, false, half(&h), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color), (Source::HalfOpen, BLUE));
    assert_eq!((d.est, d.half), (Op::Keep, Op::Keep));
    // The ACK: established now, with the half-open entry's colour (and member).
    let d = decide_tcp(ACK, false, half(&h), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color), (Source::HalfOpen, BLUE));
    assert_eq!((d.est, d.half, d.soft), (Op::Put, Op::Delete, Op::Keep));
    assert_eq!((d.state, d.flags), (FLOW_OPEN, 0));
    assert!(!d.new_flow);
    // Data riding on the completing packet is remembered.
    let d = decide_tcp(ACK, true, half(&h), &st(GREEN, None), NOW);
    assert_eq!(d.flags, FLOW_F_DATA);
    // A reset instead: recorded closing.
    let d = decide_tcp(RST, false, half(&h), &st(GREEN, None), NOW);
    assert_eq!((d.est, d.state), (Op::Put, FLOW_CLOSING));
}

#[test]
fn an_established_flow_keeps_its_member_across_any_number_of_flips() {
    let e = entry(BLUE, FLOW_OPEN, NOW - 10);
    for active in [GREEN, BLUE, GREEN] {
        let d = decide_tcp(ACK, false, est(&e), &st(active, Some(active ^ 1)), NOW);
        assert_eq!((d.source, d.color), (Source::Established, BLUE));
        assert_eq!((d.est, d.half, d.soft), (Op::Keep, Op::Keep, Op::Keep));
        assert!(!d.new_flow && !d.pin_miss);
    }
}

#[test]
fn established_entries_record_data_closing_and_activity_once() {
    let e = entry(BLUE, FLOW_OPEN, NOW - 10);
    let d = decide_tcp(ACK, true, est(&e), &st(GREEN, None), NOW);
    assert_eq!((d.est, d.flags, d.state), (Op::Put, FLOW_F_DATA, FLOW_OPEN));
    let with_data = FlowValue {
        flags: FLOW_F_DATA,
        ..e
    };
    assert_eq!(
        decide_tcp(ACK, true, est(&with_data), &st(GREEN, None), NOW).est,
        Op::Keep,
        "data is recorded once"
    );
    for f in [FIN_ACK, RST] {
        let d = decide_tcp(f, false, est(&with_data), &st(GREEN, None), NOW);
        assert_eq!(
            (d.est, d.state, d.flags),
            (Op::Put, FLOW_CLOSING, FLOW_F_DATA)
        );
        assert_eq!(d.color, BLUE);
    }
    let closing = entry(BLUE, FLOW_CLOSING, NOW - 10);
    assert_eq!(
        decide_tcp(FIN_ACK, false, est(&closing), &st(GREEN, None), NOW).est,
        Op::Keep,
        "closing is recorded once: its time starts the grace"
    );
    // An idle open entry is touched now and then, so the daemon can tell it from a dead one.
    let old = entry(BLUE, FLOW_OPEN, NOW - TOUCH_NS - 1);
    let d = decide_tcp(ACK, false, est(&old), &st(GREEN, None), NOW);
    assert_eq!((d.est, d.state), (Op::Put, FLOW_OPEN));
    let old_closing = entry(BLUE, FLOW_CLOSING, NOW - TOUCH_NS - 1);
    assert_eq!(
        decide_tcp(ACK, false, est(&old_closing), &st(GREEN, None), NOW).est,
        Op::Keep,
        "a closing entry's time is when it closed"
    );
}

#[test]
fn data_without_fin_or_rst_reopens_a_closing_entry() {
    // A reset spoofed with the client's tuple marked it closing; the client's next data says
    // the connection lives: open again, so the sweep keeps it.
    let closing = entry(BLUE, FLOW_CLOSING, NOW - 10);
    let d = decide_tcp(ACK, true, est(&closing), &st(GREEN, None), NOW);
    assert_eq!((d.est, d.state, d.color), (Op::Put, FLOW_OPEN, BLUE));
    // A FIN carrying data closes; a bare ACK after the FIN changes nothing.
    let d = decide_tcp(FIN_ACK, true, est(&closing), &st(GREEN, None), NOW);
    assert_eq!(d.state, FLOW_CLOSING);
    let d = decide_tcp(ACK, false, est(&closing), &st(GREEN, None), NOW);
    assert_eq!((d.est, d.state), (Op::Keep, FLOW_CLOSING));
}

#[test]
fn a_syn_after_close_starts_a_new_connection() {
    let closed = entry(BLUE, FLOW_CLOSING, NOW - 10);
    let d = decide_tcp(SYN, false, est(&closed), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color), (Source::Pick, GREEN));
    assert_eq!((d.est, d.half), (Op::Delete, Op::Put));
    assert!(d.new_flow);
    // On an open connection a SYN is a retransmission and changes nothing.
    let open = entry(BLUE, FLOW_OPEN, NOW - 10);
    let d = decide_tcp(SYN, false, est(&open), &st(GREEN, None), NOW);
    assert_eq!(
        (d.source, d.color, d.est),
        (Source::Established, BLUE, Op::Keep)
    );
}

#[test]
fn a_pin_miss_goes_to_the_draining_colour_then_the_active_one_and_stays_soft() {
    let d = decide_tcp(ACK, false, NONE, &st(GREEN, Some(BLUE)), NOW);
    assert_eq!((d.source, d.color), (Source::Pick, BLUE));
    assert!(d.pin_miss && !d.new_flow);
    assert_eq!((d.est, d.half, d.soft), (Op::Keep, Op::Keep, Op::Put));
    let d = decide_tcp(ACK, false, NONE, &st(GREEN, None), NOW);
    assert_eq!(d.color, GREEN);
    // A SYN-ACK towards a VIP is not an opening SYN: never a new connection.
    let d = decide_tcp(SYNACK, false, NONE, &st(GREEN, None), NOW);
    assert!(d.pin_miss && d.half == Op::Keep);
    // The soft entry then carries the flow; a SYN replaces it with a real connection.
    let s = entry(BLUE, FLOW_OPEN, NOW - 10);
    let d = decide_tcp(ACK, false, soft(&s), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color, d.soft), (Source::Soft, BLUE, Op::Keep));
    let d = decide_tcp(SYN, false, soft(&s), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color), (Source::Pick, GREEN));
    assert_eq!((d.half, d.soft), (Op::Put, Op::Delete));
}

#[test]
fn tables_are_consulted_in_order() {
    // A flow found established is not looked for further: its entry decides.
    let e = entry(BLUE, FLOW_OPEN, NOW);
    let h = entry(GREEN, FLOW_OPEN, NOW);
    let both = TcpEntries {
        established: Some(&e),
        half_open: Some(&h),
        soft: None,
    };
    assert_eq!(
        decide_tcp(ACK, false, both, &st(GREEN, None), NOW).source,
        Source::Established
    );
}

#[test]
fn color_state_drains_only_within_window_of_current_generation() {
    let active = ActiveWord::new(GREEN, 3);
    let mark = FlipMark {
        generation: 3,
        _pad: 0,
        flip_ns: 1_000,
        first_ns: [0; 2],
    };
    assert_eq!(
        ColorState::new(active, &mark, 500, 1_200).draining,
        Some(BLUE)
    );
    assert_eq!(ColorState::new(active, &mark, 500, 1_500).draining, None);
    let stale = FlipMark {
        generation: 2,
        ..mark
    };
    assert_eq!(ColorState::new(active, &stale, 500, 1_200).draining, None);
}

#[test]
fn canary_sends_new_flows_to_the_inactive_colour() {
    let s = ColorState {
        active: BLUE,
        draining: None,
        canary: true,
    };
    assert_eq!(decide_tcp(SYN, false, NONE, &s, NOW).color, GREEN);
    assert!(in_canary(0x8000, 0x7fff));
    assert!(!in_canary(0x8000, 0x8000));
    assert!(!in_canary(0, 0));
}

#[test]
fn udp_without_affinity_follows_the_active_colour_per_packet() {
    let e = entry(BLUE, FLOW_OPEN, NOW);
    let d = decide_udp(None, Some(&e), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color, d.soft), (Source::Pick, GREEN, Op::Keep));
    assert!(!d.new_flow);
}

const AFF: Affinity = Affinity {
    idle_ns: 5_000_000_000,
    max_age_ns: 60_000_000_000,
    epoch: 7,
};

fn udp_entry(color: u8, created: u64, last_seen: u64, epoch: u32) -> FlowValue {
    FlowValue {
        color,
        state: FLOW_OPEN,
        epoch,
        created_ns: created,
        last_seen_ns: last_seen,
        ..Default::default()
    }
}

#[test]
fn udp_affinity_holds_until_idle_and_is_touched_now_and_then() {
    let e = udp_entry(BLUE, NOW - 1_000, NOW - 1_000, 7);
    let d = decide_udp(Some(&AFF), Some(&e), &st(BLUE, None), NOW);
    assert_eq!((d.source, d.color, d.soft), (Source::Soft, BLUE, Op::Keep));
    let e = udp_entry(BLUE, NOW - 3 * TOUCH_NS, NOW - 2 * TOUCH_NS, 7);
    let d = decide_udp(Some(&AFF), Some(&e), &st(BLUE, None), NOW);
    assert_eq!((d.source, d.soft), (Source::Soft, Op::Put));
    let idle = udp_entry(BLUE, NOW - 6_000_000_000, NOW - 6_000_000_000, 7);
    let d = decide_udp(Some(&AFF), Some(&idle), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color, d.soft), (Source::Pick, GREEN, Op::Put));
    assert!(d.new_flow);
    let d = decide_udp(Some(&AFF), None, &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color, d.soft), (Source::Pick, GREEN, Op::Put));
}

#[test]
fn udp_affinity_follows_a_rollback_at_once_and_a_flip_within_its_max_age() {
    // A sender that never idles, on blue; green becomes active.
    let young = udp_entry(BLUE, NOW - 1_000_000_000, NOW - 10, 7);
    let d = decide_udp(Some(&AFF), Some(&young), &st(GREEN, Some(BLUE)), NOW);
    assert_eq!(d.color, BLUE, "a flip leaves it until its maximum age");
    let old = udp_entry(BLUE, NOW - 61_000_000_000, NOW - 10, 7);
    let d = decide_udp(Some(&AFF), Some(&old), &st(GREEN, None), NOW);
    assert_eq!((d.color, d.soft), (GREEN, Op::Put), "then it follows");
    // A rollback bumps the epoch: every entry made before it is void at once.
    let before_rollback = udp_entry(GREEN, NOW - 1_000, NOW - 10, 6);
    let d = decide_udp(Some(&AFF), Some(&before_rollback), &st(BLUE, None), NOW);
    assert_eq!((d.source, d.color), (Source::Pick, BLUE));
    // An entry on the active colour is never aged out while the sender keeps sending.
    let active = udp_entry(GREEN, 0, NOW - 10, 7);
    let d = decide_udp(Some(&AFF), Some(&active), &st(GREEN, None), NOW);
    assert_eq!((d.source, d.color), (Source::Soft, GREEN));
}

#[test]
fn only_resets_that_reflect_the_backend_count() {
    assert!(reset_counts(Some(FLOW_F_DATA), false));
    assert!(!reset_counts(Some(0), false), "a bare handshake");
    assert!(
        reset_counts(None, true),
        "the backend refused the connection"
    );
    assert!(!reset_counts(None, false), "a stray packet nobody steered");
}
