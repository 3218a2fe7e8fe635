//! Which colour a packet goes to, and what the flow table must remember. Pure functions, so the
//! rules the datapath applies are tested here and the eBPF side only moves bytes.

use crate::{ActiveWord, FlipMark, FlowValue, FLOW_CLOSING, FLOW_OPEN};

/// What the service's state says about colours at the time of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColorState {
    pub active: u8,
    /// The colour that was active before the last flip, while its drain window lasts.
    pub draining: Option<u8>,
    /// This new flow falls in the canary share (goes to the inactive colour).
    pub canary: bool,
}

impl ColorState {
    /// Derives the state from the ACTIVE word and the last flip mark.
    #[inline(always)]
    pub fn new(active: ActiveWord, mark: &FlipMark, drain_ns: u64, now_ns: u64) -> Self {
        let draining = (mark.generation == active.generation()
            && mark.flip_ns != 0
            && now_ns < mark.flip_ns.saturating_add(drain_ns))
        .then_some(active.color() ^ 1);
        Self {
            active: active.color(),
            draining,
            canary: false,
        }
    }

    /// The colour a brand-new flow gets.
    pub const fn new_flow_color(&self) -> u8 {
        if self.canary {
            self.active ^ 1
        } else {
            self.active
        }
    }
}

/// Is this new flow in the canary share? `random` is uniformly distributed.
pub const fn in_canary(share: u32, random: u32) -> bool {
    share != 0 && (random & 0xffff) < share
}

/// What to do with the flow table for this packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowWrite {
    None,
    /// Insert or overwrite the entry with this colour and state.
    Put {
        color: u8,
        state: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub color: u8,
    pub write: FlowWrite,
    pub new_flow: bool,
    pub pin_miss: bool,
}

/// The TCP flags that matter for pinning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

impl TcpFlags {
    pub const fn from_byte(b: u8) -> Self {
        Self {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            ack: b & 0x10 != 0,
        }
    }
}

/// TCP: a connection is pinned at its SYN and keeps its colour until it closes; see README
/// "Datapath rules".
#[inline(always)]
pub fn decide_tcp(flags: TcpFlags, entry: Option<&FlowValue>, st: &ColorState) -> Decision {
    let opening = flags.syn && !flags.ack;
    let closing = flags.fin || flags.rst;
    match entry {
        // A SYN on a tuple whose last connection closed is a new connection: pick again.
        // A SYN on an open entry is a retransmission and keeps its colour.
        Some(e) if opening && e.state == FLOW_CLOSING => new_flow(st.new_flow_color()),
        Some(e) => Decision {
            color: e.color,
            write: if closing && e.state != FLOW_CLOSING {
                FlowWrite::Put {
                    color: e.color,
                    state: FLOW_CLOSING,
                }
            } else {
                FlowWrite::None
            },
            new_flow: false,
            pin_miss: false,
        },
        None if opening => new_flow(st.new_flow_color()),
        None => {
            // No entry for a mid-connection packet: the table lost it (eviction) or the
            // connection predates the switch. While the previous colour drains, the
            // connection most likely lives there; afterwards only the active colour is left.
            let color = st.draining.unwrap_or(st.active);
            Decision {
                color,
                write: FlowWrite::Put {
                    color,
                    state: if closing { FLOW_CLOSING } else { FLOW_OPEN },
                },
                new_flow: false,
                pin_miss: true,
            }
        }
    }
}

#[inline(always)]
fn new_flow(color: u8) -> Decision {
    Decision {
        color,
        write: FlowWrite::Put {
            color,
            state: FLOW_OPEN,
        },
        new_flow: true,
        pin_miss: false,
    }
}

/// How long a UDP affinity entry may go without a refresh of `last_seen_ns` (to spare map
/// writes on every packet); the idle timeout is measured with this granularity.
pub const UDP_TOUCH_NS: u64 = 100_000_000;

/// UDP: per packet to the active colour, or with affinity, per source flow until it idles out.
#[inline(always)]
pub fn decide_udp(
    affinity: bool,
    idle_ns: u64,
    entry: Option<&FlowValue>,
    st: &ColorState,
    now_ns: u64,
) -> Decision {
    if !affinity {
        return Decision {
            color: st.new_flow_color(),
            write: FlowWrite::None,
            new_flow: false,
            pin_miss: false,
        };
    }
    match entry {
        Some(e) if now_ns.saturating_sub(e.last_seen_ns) <= idle_ns => Decision {
            color: e.color,
            write: if now_ns.saturating_sub(e.last_seen_ns) > UDP_TOUCH_NS {
                FlowWrite::Put {
                    color: e.color,
                    state: FLOW_OPEN,
                }
            } else {
                FlowWrite::None
            },
            new_flow: false,
            pin_miss: false,
        },
        _ => new_flow(st.new_flow_color()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BLUE, GREEN};

    const SYN: TcpFlags = TcpFlags::from_byte(0x02);
    const SYNACK: TcpFlags = TcpFlags::from_byte(0x12);
    const ACK: TcpFlags = TcpFlags::from_byte(0x10);
    const FIN_ACK: TcpFlags = TcpFlags::from_byte(0x11);
    const RST: TcpFlags = TcpFlags::from_byte(0x04);

    fn st(active: u8, draining: Option<u8>) -> ColorState {
        ColorState {
            active,
            draining,
            canary: false,
        }
    }

    fn entry(color: u8, state: u8) -> FlowValue {
        FlowValue {
            service_id: 0,
            color,
            state,
            _pad: [0; 2],
            last_seen_ns: 0,
        }
    }

    #[test]
    fn syn_pins_to_active_color() {
        let d = decide_tcp(SYN, None, &st(GREEN, None));
        assert_eq!(d.color, GREEN);
        assert!(d.new_flow && !d.pin_miss);
        assert_eq!(
            d.write,
            FlowWrite::Put {
                color: GREEN,
                state: FLOW_OPEN
            }
        );
    }

    #[test]
    fn established_flow_keeps_its_color_after_any_number_of_flips() {
        let e = entry(BLUE, FLOW_OPEN);
        for active in [GREEN, BLUE, GREEN] {
            let d = decide_tcp(ACK, Some(&e), &st(active, None));
            assert_eq!(d.color, BLUE);
            assert_eq!(d.write, FlowWrite::None);
            assert!(!d.new_flow && !d.pin_miss);
        }
    }

    #[test]
    fn syn_retransmission_keeps_color_but_syn_after_close_repicks() {
        let open = entry(BLUE, FLOW_OPEN);
        assert_eq!(decide_tcp(SYN, Some(&open), &st(GREEN, None)).color, BLUE);
        let closed = entry(BLUE, FLOW_CLOSING);
        let d = decide_tcp(SYN, Some(&closed), &st(GREEN, None));
        assert_eq!(d.color, GREEN);
        assert!(d.new_flow);
    }

    #[test]
    fn fin_and_rst_mark_closing_once() {
        let e = entry(BLUE, FLOW_OPEN);
        for f in [FIN_ACK, RST] {
            let d = decide_tcp(f, Some(&e), &st(GREEN, None));
            assert_eq!(d.color, BLUE);
            assert_eq!(
                d.write,
                FlowWrite::Put {
                    color: BLUE,
                    state: FLOW_CLOSING
                }
            );
        }
        let c = entry(BLUE, FLOW_CLOSING);
        assert_eq!(
            decide_tcp(FIN_ACK, Some(&c), &st(GREEN, None)).write,
            FlowWrite::None
        );
    }

    #[test]
    fn pin_miss_goes_to_draining_color_then_active() {
        let d = decide_tcp(ACK, None, &st(GREEN, Some(BLUE)));
        assert_eq!(d.color, BLUE);
        assert!(d.pin_miss && !d.new_flow);
        assert_eq!(
            d.write,
            FlowWrite::Put {
                color: BLUE,
                state: FLOW_OPEN
            }
        );
        let d = decide_tcp(ACK, None, &st(GREEN, None));
        assert_eq!(d.color, GREEN);
        assert!(d.pin_miss);
        // A SYN-ACK is not an opening SYN (it should never reach a VIP, but must not pin new).
        assert!(decide_tcp(SYNACK, None, &st(GREEN, None)).pin_miss);
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
    fn canary_sends_new_flows_to_inactive_color() {
        let s = ColorState {
            active: BLUE,
            draining: None,
            canary: true,
        };
        assert_eq!(decide_tcp(SYN, None, &s).color, GREEN);
        assert!(in_canary(0x8000, 0x7fff));
        assert!(!in_canary(0x8000, 0x8000));
        assert!(!in_canary(0, 0));
    }

    #[test]
    fn udp_per_packet_follows_active() {
        let e = entry(BLUE, FLOW_OPEN);
        let d = decide_udp(false, 0, Some(&e), &st(GREEN, None), 10);
        assert_eq!(d.color, GREEN);
        assert_eq!(d.write, FlowWrite::None);
    }

    #[test]
    fn udp_affinity_holds_until_idle_timeout() {
        let mut e = entry(BLUE, FLOW_OPEN);
        e.last_seen_ns = 1_000_000_000;
        let idle = 5_000_000_000;
        let d = decide_udp(true, idle, Some(&e), &st(GREEN, None), 1_050_000_000);
        assert_eq!(d.color, BLUE);
        assert_eq!(d.write, FlowWrite::None, "fresh entries are not rewritten");
        let d = decide_udp(true, idle, Some(&e), &st(GREEN, None), 3_000_000_000);
        assert_eq!(d.color, BLUE);
        assert_eq!(
            d.write,
            FlowWrite::Put {
                color: BLUE,
                state: FLOW_OPEN
            }
        );
        let d = decide_udp(true, idle, Some(&e), &st(GREEN, None), 6_000_000_001);
        assert_eq!(d.color, GREEN);
        assert!(d.new_flow);
    }
}
