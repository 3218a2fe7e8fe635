//! RFC 6587 framing: the incremental TCP deframer ([`Framer`]), splitting UDP datagrams into
//! lines and writing a message as exactly one output line.

/// Largest octet-counted frame or LF-terminated line accepted; bounds the
/// memory a single peer can make us hold.
const MAX_FRAME: usize = 1 << 20;
/// Digits of "1048576": a longer length field can only be zero padding.
const MAX_LEN_DIGITS: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameErrorKind {
    #[error("frame longer than {MAX_FRAME} bytes")]
    Oversize,
    #[error("invalid octet count (non-digit before SP)")]
    BadLength,
    #[error("connection closed inside an octet-counted frame")]
    Truncated,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub(crate) struct FrameError {
    pub(crate) kind: FrameErrorKind,
    /// Messages completed before the bad frame: valid, so still delivered.
    pub(crate) parsed: Vec<Vec<u8>>,
}

/// Incremental RFC 6587 deframer for one TCP connection. Frames starting
/// with a digit are octet-counted (`LEN SP MSG`), anything else ends at LF;
/// a connection may switch between the two at any frame boundary.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    pending: Vec<u8>,
}

impl Framer {
    /// Feeds bytes read from the connection and returns the messages they
    /// complete. Empty messages (blank lines, `0 `) are dropped. After an
    /// error the connection must be closed.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        self.pending.extend_from_slice(bytes);
        let mut parsed = Vec::new();
        let mut pos = 0;
        let outcome = loop {
            match next_frame(&self.pending[pos..]) {
                Ok(Some((used, msg))) => {
                    pos += used;
                    if let Some(msg) = msg {
                        parsed.push(msg.to_vec());
                    }
                }
                Ok(None) => break Ok(()),
                Err(kind) => break Err(kind),
            }
        };
        // Compact once per push rather than per frame: O(n) instead of O(n²).
        self.pending.drain(..pos);
        match outcome {
            Ok(()) => Ok(parsed),
            Err(kind) => {
                self.pending.clear();
                Err(FrameError { kind, parsed })
            }
        }
    }

    /// Called at EOF: an unterminated LF-framed tail still counts as a
    /// message, a partial octet-counted frame is an error.
    pub(crate) fn finish(&mut self) -> Result<Option<Vec<u8>>, FrameErrorKind> {
        let rest = std::mem::take(&mut self.pending);
        match rest.first() {
            None => Ok(None),
            Some(b) if b.is_ascii_digit() => Err(FrameErrorKind::Truncated),
            Some(_) => Ok(non_empty(strip_cr(&rest)).map(<[u8]>::to_vec)),
        }
    }
}

/// One parsed frame: bytes consumed and the message (None if empty).
type Frame<'a> = (usize, Option<&'a [u8]>);

/// Parses the frame at the start of `buf`; `Ok(None)` means more bytes are needed.
fn next_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameErrorKind> {
    match buf.first() {
        None => Ok(None),
        Some(b) if b.is_ascii_digit() => octet_counted(buf),
        Some(_) => lf_terminated(buf),
    }
}

fn octet_counted(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameErrorKind> {
    let mut len = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                if i >= MAX_LEN_DIGITS {
                    return Err(FrameErrorKind::BadLength);
                }
                // Cannot overflow: at most 7 digits.
                len = len * 10 + usize::from(b - b'0');
                if len > MAX_FRAME {
                    return Err(FrameErrorKind::Oversize);
                }
            }
            b' ' => {
                let end = i + 1 + len;
                return Ok(buf.get(i + 1..end).map(|msg| (end, non_empty(msg))));
            }
            _ => return Err(FrameErrorKind::BadLength),
        }
    }
    Ok(None)
}

fn lf_terminated(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameErrorKind> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > MAX_FRAME => Err(FrameErrorKind::Oversize),
        Some(i) => Ok(Some((i + 1, non_empty(strip_cr(&buf[..i]))))),
        None if buf.len() > MAX_FRAME => Err(FrameErrorKind::Oversize),
        None => Ok(None),
    }
}

/// Senders commonly end lines with CRLF; the CR is framing, not content.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn non_empty(msg: &[u8]) -> Option<&[u8]> {
    (!msg.is_empty()).then_some(msg)
}

/// A UDP datagram is normally one message, but may carry several LF-separated
/// lines; blank lines (including the one after a trailing LF) are not messages.
pub(crate) fn datagram_lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    // Common case first: `contains` on bytes is memchr, far cheaper than the
    // byte-by-byte split (which matters in unoptimised lab builds under bursts).
    let (single, multi) = if body.contains(&b'\n') {
        (None, Some(body))
    } else {
        (Some(body), None)
    };
    single
        .into_iter()
        .chain(multi.into_iter().flat_map(|b| b.split(|&c| c == b'\n')))
        .map(strip_cr)
        .filter(|l| !l.is_empty())
}

/// Appends `msg` as exactly one output line.
pub(crate) fn append_line(out: &mut Vec<u8>, msg: &[u8]) {
    let start = out.len();
    out.extend_from_slice(msg);
    // Only walk the bytes when there is something to replace.
    if msg.contains(&b'\n') || msg.contains(&b'\r') {
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn push_all(framer: &mut Framer, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(framer.push(chunk)?);
        }
        Ok(out)
    }

    pub(crate) fn msgs(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|m| m.as_bytes().to_vec()).collect()
    }

    #[test]
    fn lf_framing() -> Result<(), FrameError> {
        let mut f = Framer::default();
        let got = push_all(&mut f, &[b"<14>a\n<14>b\r\n\n<14>c"])?;
        assert_eq!(got, msgs(&["<14>a", "<14>b"]));
        assert_eq!(f.push(b"\n")?, msgs(&["<14>c"]));
        assert_eq!(f.finish(), Ok(None));
        Ok(())
    }

    #[test]
    fn unterminated_lf_tail_is_delivered_at_eof() -> Result<(), FrameError> {
        let mut f = Framer::default();
        assert!(f.push(b"<14>tail")?.is_empty());
        assert_eq!(f.finish(), Ok(Some(b"<14>tail".to_vec())));
        Ok(())
    }

    #[test]
    fn octet_counting() -> Result<(), FrameError> {
        let mut f = Framer::default();
        // The counted message may itself contain LF.
        let got = f.push(b"5 hello9 <14>x\ny z")?;
        assert_eq!(got, msgs(&["hello", "<14>x\ny z"]));
        assert_eq!(f.finish(), Ok(None));
        Ok(())
    }

    #[test]
    fn mixed_framing() -> Result<(), FrameError> {
        let mut f = Framer::default();
        let got = f.push(b"<14>lf one\n6 <14>oc<14>lf two\n3 end")?;
        assert_eq!(got, msgs(&["<14>lf one", "<14>oc", "<14>lf two", "end"]));
        Ok(())
    }

    #[test]
    fn split_at_every_byte_boundary() -> Result<(), FrameError> {
        let stream: &[u8] = b"11 <14>counted<14>line\r\n3 abc<14>last\n";
        let want = msgs(&["<14>counted", "<14>line", "abc", "<14>last"]);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut f = Framer::default();
            assert_eq!(push_all(&mut f, &[a, b])?, want, "cut at {cut}");
            assert_eq!(f.finish(), Ok(None), "cut at {cut}");
        }
        // And one byte per read.
        let mut f = Framer::default();
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(push_all(&mut f, &bytes)?, want);
        Ok(())
    }

    #[test]
    fn oversize_length_rejected() {
        let mut f = Framer::default();
        let err = f.push(b"1048577 x").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::Oversize));
        // Rejected as soon as the digits say so, before the payload arrives.
        let mut f = Framer::default();
        let err = f.push(b"9999999").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::Oversize));
    }

    #[test]
    fn max_length_accepted() -> Result<(), FrameError> {
        let mut f = Framer::default();
        let mut frame = format!("{MAX_FRAME} ").into_bytes();
        frame.resize(frame.len() + MAX_FRAME, b'x');
        let got = f.push(&frame)?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_FRAME);
        Ok(())
    }

    #[test]
    fn overlong_lf_line_rejected() {
        let mut f = Framer::default();
        let err = f.push(&vec![b'x'; MAX_FRAME + 1]).err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::Oversize));
    }

    #[test]
    fn bad_length_rejected_and_earlier_frames_kept() {
        let mut f = Framer::default();
        let err = f.push(b"<14>ok\n12a <14>x");
        match err {
            Err(e) => {
                assert_eq!(e.kind, FrameErrorKind::BadLength);
                assert_eq!(e.parsed, msgs(&["<14>ok"]));
            }
            Ok(m) => panic!("accepted bad length: {m:?}"),
        }
        let mut f = Framer::default();
        let err = f.push(b"12\n").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::BadLength));
        let mut f = Framer::default();
        let err = f.push(b"00000001 x").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::BadLength));
    }

    #[test]
    fn truncated_counted_frame_at_eof() -> Result<(), FrameError> {
        let mut f = Framer::default();
        assert!(f.push(b"10 short")?.is_empty());
        assert_eq!(f.finish(), Err(FrameErrorKind::Truncated));
        Ok(())
    }

    #[test]
    fn datagram_splitting() {
        let lines: Vec<&[u8]> = datagram_lines(b"<14>one\n").collect();
        assert_eq!(lines, vec![&b"<14>one"[..]]);
        let lines: Vec<&[u8]> = datagram_lines(b"a\n\nb\r\nc").collect();
        assert_eq!(lines, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(datagram_lines(b"\n").count(), 0);
    }

    #[test]
    fn output_line_has_no_inner_newlines() {
        let mut out = Vec::new();
        append_line(&mut out, b"a\r\nb\nc");
        assert_eq!(out, b"a  b c\n");
    }
}
