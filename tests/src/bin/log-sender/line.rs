//! The line format: the numbered syslog line (`stream=NAME seq=N`, padded) and its TCP framing.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Framing {
    /// RFC 6587 octet counting: `LEN SP MSG`.
    Octet,
    /// Non-transparent framing: MSG LF.
    Lf,
}

/// The syslog line for `seq`, padded to at least `min_size` bytes.
pub(crate) fn make_line(stream: &str, seq: u64, min_size: usize) -> String {
    let mut line = format!("<14>1 - lab log-sender - - - stream={stream} seq={seq}");
    if line.len() < min_size {
        // The space keeps `seq=N` a token of its own for whoever parses it.
        line.push(' ');
        let pad = min_size.saturating_sub(line.len());
        line.extend(std::iter::repeat_n('x', pad));
    }
    line
}

pub(crate) fn append_frame(out: &mut Vec<u8>, framing: Framing, line: &str) {
    match framing {
        Framing::Octet => {
            out.extend_from_slice(line.len().to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(line.as_bytes());
        }
        Framing::Lf => {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_and_padding() {
        let line = make_line("s", 7, 0);
        assert_eq!(line, "<14>1 - lab log-sender - - - stream=s seq=7");
        let padded = make_line("s", 7, 60);
        assert_eq!(padded.len(), 60);
        assert!(padded.starts_with(&format!("{line} x")));
        assert!(padded.ends_with('x'));
    }

    #[test]
    fn framing() {
        let mut out = Vec::new();
        append_frame(&mut out, Framing::Octet, "abc");
        append_frame(&mut out, Framing::Lf, "de");
        assert_eq!(out, b"3 abcde\n");
    }
}
