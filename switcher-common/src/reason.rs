//! Why the datapath did what it did with a packet: one per-CPU counter per reason.

macro_rules! reasons {
    ($($(#[$m:meta])* $name:ident = $label:literal,)+) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$m])* $name,)+ }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// Stable snake_case label for metrics and JSON.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)+ }
            }
        }
    };
}

reasons! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed untouched.
    NotIp = "not_ip",
    /// IP traffic that matches no service: passed untouched.
    NotService = "not_service",
    /// Ethernet or VLAN header cut short: passed untouched.
    TruncatedL2 = "truncated_l2",
    /// IP header cut short or inconsistent (version, IHL, lengths): passed untouched.
    MalformedL3 = "malformed_l3",
    /// TCP/UDP header cut short or bad (TCP data offset) on a port a service uses: passed
    /// untouched.
    MalformedL4 = "malformed_l4",
    /// IPv6 UDP with a zero checksum is invalid (RFC 8200), on a port a service uses: passed
    /// untouched.
    Udp6ZeroChecksum = "udp6_zero_checksum",
    /// IPv6 extension header we do not steer (routing, too many headers): passed untouched.
    Ipv6ExtUnsupported = "ipv6_ext_unsupported",
    /// A later fragment whose first fragment was not seen: passed untouched (see README).
    FragNoEntry = "frag_no_entry",
    /// A later fragment steered with its datagram's first fragment.
    FragFollowed = "frag_followed",
    /// A chunk of a chunked GELF message steered after the message's first-seen chunk.
    GelfChunkFollowed = "gelf_chunk_followed",
    /// Service has no backend in the chosen colour slot: passed untouched.
    NoBackend = "no_backend",
    /// TCP non-SYN without a flow entry: steered by the drain rule and pinned.
    TcpPinMiss = "tcp_pin_miss",
    /// Rewritten and sent with XDP_REDIRECT after a FIB hit.
    Redirected = "redirected",
    /// Rewritten, FIB gave no direct path (no neighbour, local, VLAN, TTL): XDP_PASS.
    FibFallback = "fib_fallback",
    /// Rewritten and handed to the kernel because the service forwards in pass mode.
    PassMode = "pass_mode",
    /// Flow or fragment table insert failed: packet still forwarded, pinning may be lost.
    TableFull = "table_full",
    /// Egress: reply source translated back to the VIP.
    EgressReversed = "egress_reversed",
    /// Egress: a reply that could not be parsed or rewritten: passed untouched.
    EgressMalformed = "egress_malformed",
    /// Egress: a packet from a backend's address and port to a client the switch did not
    /// steer to it (no flow entry): left as it is, never given the VIP's address.
    EgressUnsteered = "egress_unsteered",
    /// Egress: an ICMP error about a packet the switch steered, translated for the client.
    EgressIcmp = "egress_icmp",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_index_all() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
        }
        assert_eq!(Reason::COUNT as usize, Reason::ALL.len());
    }
}
