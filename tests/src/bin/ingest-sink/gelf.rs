//! GELF over UDP as a collector receives it (Graylog's input): a datagram is a whole message or
//! one chunk (magic 0x1e 0x0f, 8-byte message id, sequence number, count); chunks are put
//! together by message id, and a message whose chunks have not all arrived 5 s after its first
//! is dropped and counted (`ingest_errors_total{reason="gelf_incomplete"}`): the loss a switch
//! that splits a message causes. A message is zlib, gzip or plain JSON; its `short_message` is
//! written as the output line.

use std::{
    collections::HashMap,
    io::Read as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use flate2::read::{GzDecoder, ZlibDecoder};
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::warn;

use crate::{
    metrics::{SinkState, Transport},
    writer::Batch,
    LOG_TARGET,
};

/// How long a collector waits for the rest of a chunked message (Graylog, GELF spec).
const CHUNK_WINDOW: Duration = Duration::from_secs(5);
const MAX_CHUNKS: usize = 128;
const MAGIC: [u8; 2] = [0x1e, 0x0f];
/// The largest message put together (128 chunks of a jumbo datagram), against a sender that
/// would make the sink buffer without bound.
const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// A chunked message being put together.
struct Pending {
    first: Instant,
    parts: Vec<Option<Vec<u8>>>,
    got: usize,
    bytes: usize,
}

/// Chunks by message id, and the messages given up on.
#[derive(Default)]
pub(crate) struct Reassembly {
    pending: HashMap<[u8; 8], Pending>,
}

/// What one datagram gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A whole message (its encoded bytes).
    Message(Vec<u8>),
    /// A chunk of a message still incomplete.
    Waiting,
}

impl Reassembly {
    pub(crate) fn datagram(&mut self, d: &[u8], now: Instant) -> Result<Outcome> {
        if d.len() < 2 || d[..2] != MAGIC {
            return Ok(Outcome::Message(d.to_vec()));
        }
        if d.len() < 12 {
            bail!("chunk of {} bytes has no full header", d.len());
        }
        let id: [u8; 8] = d[2..10].try_into().context("message id")?;
        let (seq, count) = (usize::from(d[10]), usize::from(d[11]));
        if count == 0 || count > MAX_CHUNKS || seq >= count {
            bail!("chunk {seq} of {count}: out of range");
        }
        let p = self.pending.entry(id).or_insert_with(|| Pending {
            first: now,
            parts: vec![None; count],
            got: 0,
            bytes: 0,
        });
        if p.parts.len() != count {
            bail!(
                "chunk says {count} chunks, earlier ones said {}",
                p.parts.len()
            );
        }
        let body = &d[12..];
        if p.parts[seq].is_none() {
            p.bytes += body.len();
            if p.bytes > MAX_MESSAGE {
                self.pending.remove(&id);
                bail!("message over {MAX_MESSAGE} bytes");
            }
            p.parts[seq] = Some(body.to_vec());
            p.got += 1;
        }
        if p.got < count {
            return Ok(Outcome::Waiting);
        }
        let p = self
            .pending
            .remove(&id)
            .context("the message just completed")?;
        Ok(Outcome::Message(
            p.parts.into_iter().flatten().flatten().collect(),
        ))
    }

    /// Drops the messages incomplete for longer than the window; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now.duration_since(p.first) <= CHUNK_WINDOW);
        (before - self.pending.len()) as u64
    }
}

/// The `short_message` of an encoded GELF message (zlib, gzip or plain JSON).
pub(crate) fn short_message(encoded: &[u8]) -> Result<String> {
    let json = match encoded {
        [0x1f, 0x8b, ..] => inflate(GzDecoder::new(encoded))?,
        // A zlib header: CMF 0x78 (deflate, 32K window), FCHECK makes the pair a multiple of 31.
        [0x78, b, ..] if (0x78u16 * 256 + u16::from(*b)).is_multiple_of(31) => {
            inflate(ZlibDecoder::new(encoded))?
        }
        _ => encoded.to_vec(),
    };
    let v: serde_json::Value = serde_json::from_slice(&json).context("GELF is not JSON")?;
    v.get("short_message")
        .and_then(|m| m.as_str())
        .map(|m| m.replace('\n', " "))
        .context("GELF message without short_message")
}

fn inflate(mut r: impl std::io::Read) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.by_ref()
        .take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut out)
        .context("decompressing")?;
    if out.len() > MAX_MESSAGE {
        bail!("message inflates past {MAX_MESSAGE} bytes");
    }
    Ok(out)
}

pub(crate) async fn serve_gelf(
    sock: UdpSocket,
    addr: SocketAddr,
    shared: Arc<SinkState>,
    tx: mpsc::Sender<Batch>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut chunks = Reassembly::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = sock.recv(&mut buf) => {
                let len = match r {
                    Ok(len) => len,
                    Err(e) => {
                        warn!(target: LOG_TARGET, %addr, "GELF receive: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let line = chunks
                    .datagram(&buf[..len], Instant::now())
                    .and_then(|o| match o {
                        Outcome::Message(m) => short_message(&m).map(Some),
                        Outcome::Waiting => Ok(None),
                    });
                match line {
                    Ok(Some(line)) => {
                        let mut batch = Batch::new(Transport::Udp);
                        batch.add(line.as_bytes());
                        if tx.send(batch).await.is_err() {
                            return; // writer gone: shutting down
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        shared.gelf_invalid.inc();
                        warn!(target: LOG_TARGET, %addr, "GELF datagram dropped: {e:#}");
                    }
                }
            }
            _ = tick.tick() => {
                let lost = chunks.expire(Instant::now());
                if lost > 0 {
                    shared.gelf_incomplete.inc_by(lost);
                    warn!(target: LOG_TARGET, %addr, "{lost} GELF message(s) incomplete after 5 s: dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn chunk(id: u8, seq: u8, count: u8, body: &[u8]) -> Vec<u8> {
        let mut d = vec![0x1e, 0x0f, 0, 0, 0, 0, 0, 0, 0, id, seq, count];
        d.extend_from_slice(body);
        d
    }

    #[test]
    fn chunks_in_any_order_make_the_message() {
        let mut r = Reassembly::default();
        let t = Instant::now();
        assert_eq!(
            r.datagram(&chunk(1, 2, 3, b"c"), t).expect("ok"),
            Outcome::Waiting
        );
        assert_eq!(
            r.datagram(&chunk(1, 0, 3, b"a"), t).expect("ok"),
            Outcome::Waiting
        );
        // A repeated chunk changes nothing.
        assert_eq!(
            r.datagram(&chunk(1, 0, 3, b"a"), t).expect("ok"),
            Outcome::Waiting
        );
        assert_eq!(
            r.datagram(&chunk(1, 1, 3, b"b"), t).expect("ok"),
            Outcome::Message(b"abc".to_vec())
        );
        assert_eq!(
            r.datagram(b"{\"short_message\":\"x\"}", t).expect("ok"),
            Outcome::Message(b"{\"short_message\":\"x\"}".to_vec())
        );
        assert!(r.datagram(&chunk(2, 3, 3, b"x"), t).is_err());
        assert!(r.datagram(&chunk(2, 0, 0, b"x"), t).is_err());
        assert!(r.datagram(&chunk(2, 0, 129, b"x"), t).is_err());
        assert!(r.datagram(&[0x1e, 0x0f, 1], t).is_err());
    }

    #[test]
    fn a_message_missing_a_chunk_after_five_seconds_is_dropped() {
        let mut r = Reassembly::default();
        let t = Instant::now();
        r.datagram(&chunk(1, 0, 2, b"a"), t).expect("ok");
        r.datagram(&chunk(2, 0, 2, b"a"), t + Duration::from_secs(3))
            .expect("ok");
        assert_eq!(r.expire(t + Duration::from_secs(5)), 0);
        assert_eq!(r.expire(t + Duration::from_millis(5001)), 1);
        // The late chunk of message 1 starts a new message that never completes.
        assert_eq!(
            r.datagram(&chunk(1, 1, 2, b"b"), t + Duration::from_secs(6))
                .expect("ok"),
            Outcome::Waiting
        );
        assert_eq!(
            r.datagram(&chunk(2, 1, 2, b"b"), t + Duration::from_secs(6))
                .expect("ok"),
            Outcome::Message(b"ab".to_vec())
        );
    }

    #[test]
    fn zlib_gzip_and_plain_messages_are_read() {
        let json = br#"{"version":"1.1","host":"h","short_message":"stream=g seq=4"}"#;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).expect("zlib");
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        g.write_all(json).expect("gzip");
        for encoded in [
            json.to_vec(),
            z.finish().expect("zlib"),
            g.finish().expect("gzip"),
        ] {
            assert_eq!(short_message(&encoded).expect("decoded"), "stream=g seq=4");
        }
        assert!(short_message(b"{\"host\":\"h\"}").is_err());
        assert!(short_message(b"<14>not gelf").is_err());
    }
}
