//! Chunked GELF over UDP: a message too big for one datagram is sent as up to 128 chunks, each
//! starting with a 12-byte header (magic 0x1e 0x0f, an 8-byte message id, the chunk's sequence
//! number, the chunk count). The collector reassembles by message id and drops a message whose
//! chunks do not all arrive within 5 s, so every chunk of a message must reach the same member:
//! the datapath records where the first chunk it sees went and sends the others after it.

/// Bytes of the chunk header at the start of the UDP payload.
pub const CHUNK_HEADER_LEN: usize = 12;
/// The most chunks a message may have (GELF spec).
pub const MAX_CHUNKS: u8 = 128;
/// How long the chunks of a message follow the first one seen. A collector keeps an incomplete
/// message 5 s; twice that leaves room for a first-seen chunk that was not the first sent.
pub const CHUNK_TTL_NS: u64 = 10_000_000_000;
const _: () = assert!(CHUNK_TTL_NS >= 5_000_000_000, "at least a collector's 5 s");

const MAGIC: [u8; 2] = [0x1e, 0x0f];

/// One chunk's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub message_id: [u8; 8],
    pub seq: u8,
    pub count: u8,
}

/// The chunk header in the first bytes of a UDP payload, if it is one of a message of at least
/// two chunks. A single-chunk message needs no affinity, and a header whose sequence number or
/// count is out of range is not GELF (a collector discards it): both take the normal path.
#[inline(always)]
pub fn chunk(payload: &[u8; CHUNK_HEADER_LEN]) -> Option<Chunk> {
    if payload[0] != MAGIC[0] || payload[1] != MAGIC[1] {
        return None;
    }
    let (seq, count) = (payload[10], payload[11]);
    if !(2..=MAX_CHUNKS).contains(&count) || seq >= count {
        return None;
    }
    let mut message_id = [0u8; 8];
    message_id.copy_from_slice(&payload[2..10]);
    Some(Chunk {
        message_id,
        seq,
        count,
    })
}

/// Whether a recorded chunk entry made at `created_ns` still steers a chunk seen at `now_ns`.
#[inline(always)]
pub const fn follows(created_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(created_ns) <= CHUNK_TTL_NS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u64, seq: u8, count: u8) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[..2].copy_from_slice(&MAGIC);
        h[2..10].copy_from_slice(&id.to_be_bytes());
        h[10] = seq;
        h[11] = count;
        h
    }

    #[test]
    fn reads_a_chunk_header() {
        let c = chunk(&header(0x0102_0304_0506_0708, 3, 4)).expect("a chunk");
        assert_eq!(c.message_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((c.seq, c.count), (3, 4));
        assert!(chunk(&header(9, 127, 128)).is_some(), "the largest message");
    }

    #[test]
    fn what_is_not_a_chunk_of_a_multi_chunk_message() {
        // A syslog line, zlib and gzip GELF (unchunked), each start differently.
        assert_eq!(chunk(b"<14>1 - host"), None);
        let mut zlib = header(1, 0, 2);
        zlib[..2].copy_from_slice(&[0x78, 0x9c]);
        assert_eq!(chunk(&zlib), None);
        let mut gzip = header(1, 0, 2);
        gzip[..2].copy_from_slice(&[0x1f, 0x8b]);
        assert_eq!(chunk(&gzip), None);
        assert_eq!(
            chunk(&header(1, 0, 1)),
            None,
            "one chunk: nothing to keep together"
        );
        assert_eq!(chunk(&header(1, 0, 0)), None);
        assert_eq!(chunk(&header(1, 4, 4)), None, "sequence past the count");
        assert_eq!(chunk(&header(1, 0, 129)), None, "more than 128 chunks");
        let mut half = header(1, 0, 2);
        half[1] = 0x0e;
        assert_eq!(chunk(&half), None);
    }

    #[test]
    fn an_entry_steers_for_its_time_to_live_only() {
        assert!(follows(100, 100));
        assert!(follows(100, 100 + CHUNK_TTL_NS));
        assert!(!follows(100, 101 + CHUNK_TTL_NS));
        // A clock read before the entry was made (another CPU) is not "expired".
        assert!(follows(200, 100));
    }
}
