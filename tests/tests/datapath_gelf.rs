//! Chunked GELF through the datapath (BPF_PROG_TEST_RUN): every chunk of a message goes where
//! its first-seen chunk went, across flips and canary draws, for 10 s; what is not a chunk of a
//! multi-chunk message follows the normal rule. Needs root (loads BPF programs).

mod support;

use support::*;
use switcher::datapath::monotonic_ns;
use switcher::domain::Color;
use switcher_common::{gelf::CHUNK_TTL_NS, FragValue, GelfKey, Reason, BLUE, FAMILY_V4, GREEN};

const SERVICES: &str = r#"
[[service]]
name = "gelf4"
vip = "198.18.10.10"
port = 12201
protocol = "udp"
forward = "pass"
blue  = { backend = "198.18.1.2:12201" }
green = { backend = "198.18.2.2:12201" }

[[service]]
name = "gelf6"
vip = "2001:2:0:10::10"
port = 12201
protocol = "udp"
forward = "pass"
blue  = { backend = "[2001:2:0:1::2]:12201" }
green = { backend = "[2001:2:0:2::2]:12201" }

[[service]]
name = "plain4"
vip = "198.18.10.10"
port = 12202
protocol = "udp"
forward = "pass"
gelf = false
blue  = { backend = "198.18.1.2:12202" }
green = { backend = "198.18.2.2:12202" }
"#;

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.10.10";
const BLUE4: &str = "198.18.1.2";
const GREEN4: &str = "198.18.2.2";

/// Chunk `seq` of `count` of message `id`, carrying `body`.
fn chunk(id: u64, seq: u8, count: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x1e, 0x0f];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[seq, count]);
    p.extend_from_slice(body);
    p
}

/// A chunk from `src`:`sport` to the gelf4 VIP, and the same packet as it must leave for the
/// backend at `to`.
fn sent(src: &str, sport: u16, payload: &[u8], to: &str) -> (Vec<u8>, Vec<u8>) {
    (
        udp4(src, sport, VIP, 12201, payload),
        udp4(src, sport, to, 12201, payload),
    )
}

fn gelf_map(t: &TestDatapath) -> aya::maps::HashMap<aya::maps::MapData, GelfKey, FragValue> {
    let pin = t
        .loaded
        .maps_dir()
        .join(switcher_common::names::GELF_CHUNKS);
    let data = aya::maps::MapData::from_pin(&pin).expect("GELF_CHUNKS pin");
    let map = aya::maps::Map::from_map_data(data).expect("GELF_CHUNKS map type");
    aya::maps::HashMap::try_from(map).expect("GELF_CHUNKS as a hash map")
}

#[test]
fn chunks_of_a_message_follow_its_first_seen_chunk_across_flips() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("gelf4");
    let body = b"{\"short_message\":\"part\"}";

    let (a0, to_blue) = sent(CLIENT, 40000, &chunk(0xa, 0, 4, body), BLUE4);
    assert_eq!(
        t.xdp(&a0),
        (XDP_PASS, to_blue),
        "first chunk: active colour"
    );
    t.dp().flip(id, Color::Green).expect("flip");
    // The rest of message A, out of order, on blue although green is active.
    for seq in [2u8, 1, 3] {
        let (p, to_blue) = sent(CLIENT, 40000, &chunk(0xa, seq, 4, body), BLUE4);
        assert_eq!(t.xdp(&p), (XDP_PASS, to_blue), "chunk {seq} of A follows A");
    }
    assert_eq!(t.reason(Reason::GelfChunkFollowed), 3);

    // Message B is first seen by its last chunk, after the flip: green, and stays there when
    // the colours flip back.
    let (b3, to_green) = sent(CLIENT, 40000, &chunk(0xb, 2, 3, body), GREEN4);
    assert_eq!(t.xdp(&b3), (XDP_PASS, to_green));
    t.dp().flip(id, Color::Blue).expect("flip back");
    for seq in [0u8, 1] {
        let (p, to_green) = sent(CLIENT, 40000, &chunk(0xb, seq, 3, body), GREEN4);
        assert_eq!(
            t.xdp(&p),
            (XDP_PASS, to_green),
            "chunk {seq} of B follows B"
        );
    }

    // A message id is a sender's own: the same id from another address is another message,
    // and a chunk of A from another source port of A's sender is still A.
    let (other, to_blue) = sent("198.18.0.2", 40000, &chunk(0xb, 1, 3, body), BLUE4);
    assert_eq!(t.xdp(&other).1, to_blue, "another sender's message 0xb");
    let (port, to_blue) = sent(CLIENT, 40001, &chunk(0xa, 3, 4, body), BLUE4);
    assert_eq!(t.xdp(&port).1, to_blue, "A's chunk from another port");

    // Not chunks of a multi-chunk message: each follows the active colour (blue now, then green).
    t.dp().flip(id, Color::Green).expect("flip");
    let plain: [&[u8]; 5] = [
        b"{\"version\":\"1.1\",\"short_message\":\"unchunked\"}",
        &[0x78, 0x9c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        &chunk(0xa, 0, 1, body),      // a message of one chunk
        &chunk(0xa, 4, 4, body),      // sequence past the count
        &chunk(0xa, 0, 4, &[])[..11], // header cut short
    ];
    for p in plain {
        let (pkt, to_green) = sent(CLIENT, 40000, p, GREEN4);
        assert_eq!(t.xdp(&pkt), (XDP_PASS, to_green), "{p:02x?}");
    }
    assert_eq!(
        t.reason(Reason::GelfChunkFollowed),
        6,
        "only chunks followed"
    );
    // Counters: A's 4 + B's 3 chunks went where their messages went.
    let (blue, green) = (t.counters(id, Color::Blue), t.counters(id, Color::Green));
    assert_eq!((blue.packets, green.packets), (4 + 1 + 1, 3 + 5));
}

#[test]
fn ipv6_chunks_stay_together_too() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("gelf6");
    let body = b"{\"short_message\":\"v6\"}";
    let pkt = |seq, dst: &str| udp6("2001:2::1", 41000, dst, 12201, &chunk(7, seq, 2, body));
    assert_eq!(t.xdp(&pkt(0, "2001:2:0:10::10")).1, pkt(0, "2001:2:0:1::2"));
    t.dp().flip(id, Color::Green).expect("flip");
    assert_eq!(
        t.xdp(&pkt(1, "2001:2:0:10::10")).1,
        pkt(1, "2001:2:0:1::2"),
        "second chunk follows the first to blue"
    );
    assert_eq!(t.reason(Reason::GelfChunkFollowed), 1);
}

#[test]
fn without_gelf_each_chunk_is_steered_on_its_own() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("plain4");
    let body = b"x";
    let pkt = |seq, dst| udp4(CLIENT, 40000, dst, 12202, &chunk(1, seq, 2, body));
    assert_eq!(t.xdp(&pkt(0, VIP)).1, pkt(0, BLUE4));
    t.dp().flip(id, Color::Green).expect("flip");
    assert_eq!(
        t.xdp(&pkt(1, VIP)).1,
        pkt(1, GREEN4),
        "gelf = false: the chunk follows the flip (the message is split)"
    );
    assert_eq!(t.reason(Reason::GelfChunkFollowed), 0);
}

#[test]
fn a_canary_draws_once_per_message() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("gelf4");
    // Half of the new flows to the candidate: each chunk drawing for itself would split 7 in 8
    // four-chunk messages.
    t.dp().set_canary(id, 0x8000).expect("canary");
    let (mut whole_blue, mut whole_green) = (0, 0);
    for m in 0..200u64 {
        let mut dests = Vec::new();
        for seq in 0..4u8 {
            let (p, _) = sent(CLIENT, 40000, &chunk(0x1000 + m, seq, 4, b"c"), BLUE4);
            let (_, out) = t.xdp(&p);
            dests.push(out[30..34].to_vec()); // IPv4 destination (Ethernet 14 + 16)
        }
        assert!(
            dests.iter().all(|d| *d == dests[0]),
            "message {m} split: {dests:?}"
        );
        match <[u8; 4]>::try_from(&dests[0][..]).expect("4 bytes") {
            d if d == v4(BLUE4) => whole_blue += 1,
            d if d == v4(GREEN4) => whole_green += 1,
            d => panic!("message {m} went to {d:?}"),
        }
    }
    assert!(
        whole_blue > 50 && whole_green > 50,
        "both colours drew about half the messages: {whole_blue} blue, {whole_green} green"
    );
    assert_eq!(t.reason(Reason::GelfChunkFollowed), 200 * 3);
}

#[test]
fn a_message_entry_steers_for_ten_seconds() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("gelf4");
    let body = b"{}";
    let (c0, to_blue) = sent(CLIENT, 40000, &chunk(0x77, 0, 3, body), BLUE4);
    assert_eq!(t.xdp(&c0).1, to_blue);

    let mut map = gelf_map(&t);
    let entries: Vec<(GelfKey, FragValue)> = map
        .iter()
        .collect::<Result<_, _>>()
        .expect("read GELF_CHUNKS");
    assert_eq!(entries.len(), 1, "one message, one entry: {entries:?}");
    let (k, v) = entries[0];
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&v4(CLIENT));
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&v4(VIP));
    assert_eq!(
        k,
        GelfKey {
            src,
            dst,
            message_id: 0x77u64.to_be_bytes(),
            dport_be: 12201u16.to_be(),
            family: FAMILY_V4,
            _pad: 0,
        }
    );
    assert_eq!((v.service_id, v.color), (id, BLUE));
    t.dp().flip(id, Color::Green).expect("flip");
    let aged = |ns: u64| FragValue {
        created_ns: monotonic_ns().expect("clock") - ns,
        ..v
    };

    // Within the time to live (9 s old): followed to blue.
    map.insert(k, aged(CHUNK_TTL_NS - 1_000_000_000), 0)
        .expect("age the entry");
    let (c1, to_blue) = sent(CLIENT, 40000, &chunk(0x77, 1, 3, body), BLUE4);
    assert_eq!(t.xdp(&c1).1, to_blue, "9 s old: followed");
    // Past it (11 s): a collector dropped the message long ago; the chunk starts over on the
    // active colour and its entry is replaced.
    map.insert(k, aged(CHUNK_TTL_NS + 1_000_000_000), 0)
        .expect("age the entry");
    let (c2, to_green) = sent(CLIENT, 40000, &chunk(0x77, 2, 3, body), GREEN4);
    assert_eq!(t.xdp(&c2).1, to_green, "11 s old: steered afresh");
    let after = map.get(&k, 0).expect("entry replaced");
    assert_eq!(after.color, GREEN);
    assert_eq!(t.reason(Reason::GelfChunkFollowed), 1);
}

#[test]
fn an_ip_fragmented_chunk_and_its_message_stay_on_one_colour() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("gelf4");
    let big: Vec<u8> = (0..900u32).map(|i| (i % 251) as u8).collect();
    let c0 = chunk(0x99, 0, 2, &big);
    let (f1, f2) = fragment_v4(&udp4(CLIENT, 40000, VIP, 12201, &c0), 504, 0x1234);
    let (e1, e2) = fragment_v4(&udp4(CLIENT, 40000, BLUE4, 12201, &c0), 504, 0x1234);
    assert_eq!(t.xdp(&f1), (XDP_PASS, e1));
    t.dp().flip(id, Color::Green).expect("flip");
    assert_eq!(t.xdp(&f2), (XDP_PASS, e2), "the datagram's second fragment");
    let (c1, to_blue) = sent(CLIENT, 40000, &chunk(0x99, 1, 2, b"end"), BLUE4);
    assert_eq!(t.xdp(&c1).1, to_blue, "the message's second chunk");
    assert_eq!(t.reason(Reason::FragFollowed), 1);
    assert_eq!(t.reason(Reason::GelfChunkFollowed), 1);
}
