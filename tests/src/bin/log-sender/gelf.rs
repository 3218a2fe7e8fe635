//! GELF over UDP as client libraries send it: each line becomes a GELF 1.1 JSON message
//! (`short_message` is the numbered line, `_pad` incompressible padding up to --size),
//! compressed, and sent as exactly --gelf-chunks chunks (magic 0x1e 0x0f, an 8-byte message id
//! unique to this run, sequence number, count) from one socket. The chunks of a message are
//! spread evenly over the message's interval, so a flip at any moment can fall between two of
//! them.

use std::{io::Write as _, net::UdpSocket, time::Duration};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::{
    line::make_line,
    plan::{sleep_until, Plan},
    progress::Progress,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Compression {
    None,
    Zlib,
    Gzip,
}

/// How a GELF run encodes and splits its messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GelfShape {
    pub(crate) chunks: u8,
    pub(crate) compression: Compression,
}

/// The GELF message for `seq`, encoded.
pub(crate) fn message(stream: &str, seq: u64, size: usize, c: Compression) -> Result<Vec<u8>> {
    let line = make_line(stream, seq, 0);
    // xorshift from the seq: padding that does not compress, so the encoded size (and the
    // number of bytes per chunk) follows --size.
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let pad: String = (0..size.saturating_sub(line.len()))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x & 15) as usize])
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.1",
        "host": "log-sender",
        "short_message": line,
        "level": 6,
        "_pad": pad,
    });
    let raw = serde_json::to_vec(&json).context("encoding GELF")?;
    Ok(match c {
        Compression::None => raw,
        Compression::Zlib => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&raw).context("zlib")?;
            z.finish().context("zlib")?
        }
        Compression::Gzip => {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&raw).context("gzip")?;
            z.finish().context("gzip")?
        }
    })
}

/// `encoded` as `n` chunks of message `id` (1: the message itself, unchunked).
pub(crate) fn chunks(encoded: &[u8], id: u64, n: u8) -> Result<Vec<Vec<u8>>> {
    if n == 0 || n > 128 {
        bail!("a GELF message has 1 to 128 chunks, not {n}");
    }
    if n == 1 {
        return Ok(vec![encoded.to_vec()]);
    }
    if encoded.len() < usize::from(n) {
        bail!("{} bytes cannot make {n} chunks", encoded.len());
    }
    // Near-equal parts: the first `len % n` one byte longer.
    let (base, longer) = (
        encoded.len() / usize::from(n),
        encoded.len() % usize::from(n),
    );
    let mut rest = encoded;
    let mut out = Vec::with_capacity(usize::from(n));
    for seq in 0..n {
        let len = base + usize::from(usize::from(seq) < longer);
        let (body, tail) = rest.split_at(len);
        rest = tail;
        let mut d = vec![0x1e, 0x0f];
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(&[seq, n]);
        d.extend_from_slice(body);
        out.push(d);
    }
    Ok(out)
}

/// Sends the plan's lines as GELF messages over `sock` (connected).
pub(crate) fn run_gelf(
    plan: &Plan,
    progress: &Progress,
    sock: &UdpSocket,
    shape: GelfShape,
) -> Result<()> {
    // Message ids unique to this run: the clock's nanoseconds in the high half, the seq below.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) << 32)
        .unwrap_or(0);
    let stream = plan.stream_name(0);
    let spread = Duration::from_secs_f64(plan.interval / f64::from(shape.chunks));
    for index in 0..plan.count {
        let Some(due) = plan.due(index) else { break };
        let seq = plan.seq(index);
        let encoded = message(&stream, seq, plan.size, shape.compression)?;
        let parts = chunks(&encoded, base | (seq & 0xffff_ffff), shape.chunks)?;
        let mut failed = false;
        for (k, part) in parts.iter().enumerate() {
            sleep_until(due + spread * k as u32);
            if let Err(e) = sock.send(part) {
                if progress.error() <= 10 {
                    eprintln!("log-sender: GELF send of seq {seq} chunk {k}: {e}");
                }
                failed = true;
                break;
            }
        }
        if !failed {
            progress.record(seq, seq, 1);
        }
    }
    progress.send_loop_done(plan.t0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn a_message_splits_into_exactly_the_chunks_asked() {
        let m = message("g", 3, 900, Compression::Zlib).expect("message");
        assert!(
            m.len() > 400,
            "the padding hardly compresses: {} bytes",
            m.len()
        );
        let parts = chunks(&m, 0xabc, 4).expect("chunks");
        assert_eq!(parts.len(), 4);
        for (seq, p) in parts.iter().enumerate() {
            assert_eq!(&p[..2], &[0x1e, 0x0f]);
            assert_eq!(&p[2..10], &0xabcu64.to_be_bytes());
            assert_eq!((p[10], p[11]), (seq as u8, 4));
        }
        let joined: Vec<u8> = parts.iter().flat_map(|p| p[12..].to_vec()).collect();
        let mut json = String::new();
        flate2::read::ZlibDecoder::new(&joined[..])
            .read_to_string(&mut json)
            .expect("inflate");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            v["short_message"],
            "<14>1 - lab log-sender - - - stream=g seq=3"
        );
        assert_eq!(chunks(&m, 1, 1).expect("one")[0], m, "one chunk: unchunked");
        assert!(chunks(&m, 1, 0).is_err());
        assert!(chunks(&m, 1, 129).is_err());
        assert!(chunks(b"ab", 1, 3).is_err());
        let nine = chunks(b"123456789", 1, 4).expect("9 bytes in 4");
        let sizes: Vec<usize> = nine.iter().map(|p| p.len() - 12).collect();
        assert_eq!(sizes, [3, 2, 2, 2]);
    }
}
