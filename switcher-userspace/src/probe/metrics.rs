//! Prometheus text exposition (0.0.4) and OpenMetrics text parser, and a scraper, so the
//! controller can read a backend's own counters (errors, messages) before and after a flip.
//!
//! Only samples are kept: `# HELP/TYPE/UNIT` and other comments are skipped, `# EOF` ends an
//! OpenMetrics exposition. OpenMetrics counters appear under their sample name (`x_total`),
//! as do histogram/summary series (`x_bucket{le="+Inf"}`, `x_sum`, `x_count`). Timestamps and
//! exemplars are accepted and dropped.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::{http, ProbeError};

/// Preferred format first; both are text, which is all the parser reads.
const ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// Bound on a scraped body: a runaway exporter must not exhaust the controller's memory.
const MAX_BODY: usize = 32 << 20;
/// How much of an offending line an error quotes.
const QUOTE_MAX: usize = 160;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Fetch(#[from] ProbeError),
    #[error("GET {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: body is not UTF-8 text")]
    NotText { url: String },
    #[error("metrics line {line}: {reason}: {text:?}")]
    Parse {
        line: usize,
        reason: String,
        text: String,
    },
}

/// Parses a Prometheus text (0.0.4) or OpenMetrics text exposition into its samples.
pub fn parse(text: &str) -> Result<Vec<Sample>, MetricsError> {
    let mut samples = Vec::new();
    let mut eof = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let fail = |reason: String| MetricsError::Parse {
            line: i + 1,
            reason,
            text: quote(raw),
        };
        if line.is_empty() {
            continue;
        }
        if eof {
            return Err(fail("data after # EOF".to_owned()));
        }
        if let Some(comment) = line.strip_prefix('#') {
            eof = comment.trim() == "EOF";
            continue;
        }
        samples.push(parse_sample(line).map_err(fail)?);
    }
    Ok(samples)
}

/// GETs `url` (plain http, bounded by `timeout`) and parses the exposition; a non-2xx status
/// is an error.
pub async fn scrape(url: &str, timeout: Duration) -> Result<Vec<Sample>, MetricsError> {
    let fetched = http::get(url, timeout, Some(ACCEPT), Some(MAX_BODY)).await?;
    if !(200..300).contains(&fetched.status) {
        return Err(MetricsError::Status {
            url: url.to_owned(),
            status: fetched.status,
        });
    }
    let body = fetched.body.unwrap_or_default();
    let text = std::str::from_utf8(&body).map_err(|_| MetricsError::NotText {
        url: url.to_owned(),
    })?;
    parse(text)
}

/// Sum of the samples named `name` whose labels include all of `labels` (None if no such
/// sample: no data). As in Prometheus, a wanted empty value also matches an absent label.
pub fn sum(samples: &[Sample], name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels.iter().all(|(k, v)| match s.labels.get(k) {
                Some(have) => have == v,
                None => v.is_empty(),
            })
        })
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn quote(line: &str) -> String {
    match line.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Byte cursor over one line. Every token boundary is an ASCII byte, so slices between
/// positions are valid UTF-8.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<(), String> {
        match self.peek() {
            Some(b) if b == want => {
                self.pos += 1;
                Ok(())
            }
            Some(b) => Err(format!("expected {what}, found {:?}", char::from(b))),
            None => Err(format!("expected {what}, found end of line")),
        }
    }

    /// `[first][rest]*`, possibly empty.
    fn ident(&mut self, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        if self.peek().is_some_and(first) {
            self.pos += 1;
            while self.peek().is_some_and(rest) {
                self.pos += 1;
            }
        }
        &self.line[start..self.pos]
    }

    /// Up to the next blank or the end of the line.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|b| b != b' ' && b != b'\t') {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    /// A double-quoted string with the exposition escapes `\\`, `\"` and `\n`.
    fn quoted(&mut self) -> Result<String, String> {
        self.expect(b'"', "'\"'")?;
        let mut out = Vec::new();
        let bytes = self.line.as_bytes();
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return Err("unterminated quoted string".to_owned());
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let escaped = match bytes.get(self.pos) {
                        Some(b'\\') => b'\\',
                        Some(b'"') => b'"',
                        Some(b'n') => b'\n',
                        Some(&other) => {
                            return Err(format!(
                                "invalid escape \\{} in quoted string",
                                char::from(other)
                            ))
                        }
                        None => return Err("unterminated quoted string".to_owned()),
                    };
                    self.pos += 1;
                    out.push(escaped);
                }
                _ => out.push(b),
            }
        }
        // Only whole UTF-8 sequences were copied (the delimiters are ASCII).
        String::from_utf8(out).map_err(|_| "quoted string is not UTF-8".to_owned())
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit()
}

fn is_label_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_label_char(b: u8) -> bool {
    is_label_start(b) || b.is_ascii_digit()
}

/// `name[{labels}] value [timestamp] [# exemplar]`. The name may also be a quoted string
/// inside the braces (`{"name.with.dots", l="v"}`), as newer exporters write UTF-8 names.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut c = Cursor { line, pos: 0 };
    let mut name = match c.peek() {
        Some(b'{') => None,
        _ => {
            let name = c.ident(is_name_start, is_name_char);
            if name.is_empty() {
                return Err("expected a metric name".to_owned());
            }
            Some(name.to_owned())
        }
    };
    let mut labels = BTreeMap::new();
    if c.peek() == Some(b'{') {
        c.pos += 1;
        parse_labels(&mut c, &mut name, &mut labels)?;
    }
    let name = name.ok_or("no metric name in the braces")?;
    if !c.skip_blanks() {
        return Err(match c.peek() {
            None => "missing value".to_owned(),
            Some(b) => format!(
                "expected a blank before the value, found {:?}",
                char::from(b)
            ),
        });
    }
    let value = parse_number(c.token(), "value")?;
    c.skip_blanks();
    if c.peek().is_some_and(|b| b != b'#') {
        // Prometheus: integer milliseconds; OpenMetrics: float seconds. Checked, not kept.
        let ts = parse_number(c.token(), "timestamp")?;
        if !ts.is_finite() {
            return Err("timestamp is not a finite number".to_owned());
        }
        c.skip_blanks();
    }
    match c.peek() {
        None => {}
        // OpenMetrics exemplar (`# {trace_id="…"} 1.0`): not needed, dropped.
        Some(b'#') => {}
        Some(_) => return Err(format!("unexpected text after the value: {:?}", c.token())),
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// After `{` up to and including `}`.
fn parse_labels(
    c: &mut Cursor<'_>,
    name: &mut Option<String>,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    loop {
        c.skip_blanks();
        if c.peek() == Some(b'}') {
            c.pos += 1;
            return Ok(());
        }
        let key = if c.peek() == Some(b'"') {
            let quoted = c.quoted()?;
            c.skip_blanks();
            if c.peek() == Some(b'=') {
                quoted
            } else {
                // A lone quoted string is the metric name.
                if name.is_some() {
                    return Err(format!("second metric name {quoted:?} in the braces"));
                }
                *name = Some(quoted);
                if !labels.is_empty() {
                    return Err("the quoted metric name must come first".to_owned());
                }
                if !close_or_next(c)? {
                    return Ok(());
                }
                continue;
            }
        } else {
            let key = c.ident(is_label_start, is_label_char);
            if key.is_empty() {
                return Err(match c.peek() {
                    None => "unterminated label set".to_owned(),
                    Some(b) => format!("expected a label name, found {:?}", char::from(b)),
                });
            }
            key.to_owned()
        };
        c.skip_blanks();
        c.expect(b'=', &format!("'=' after label {key}"))?;
        c.skip_blanks();
        let value = c.quoted().map_err(|e| format!("label {key}: {e}"))?;
        if labels.contains_key(&key) {
            return Err(format!("duplicate label {key}"));
        }
        labels.insert(key, value);
        if !close_or_next(c)? {
            return Ok(());
        }
    }
}

/// After a label: `,` (true: more may follow) or `}` (false: done).
fn close_or_next(c: &mut Cursor<'_>) -> Result<bool, String> {
    c.skip_blanks();
    match c.peek() {
        Some(b',') => {
            c.pos += 1;
            Ok(true)
        }
        Some(b'}') => {
            c.pos += 1;
            Ok(false)
        }
        None => Err("unterminated label set".to_owned()),
        Some(b) => Err(format!(
            "expected ',' or '}}' after a label, found {:?}",
            char::from(b)
        )),
    }
}

/// Go's ParseFloat spellings as the exposition formats use them: decimals, exponents,
/// `+Inf`/`-Inf`/`Inf`, `NaN` (case-insensitive).
fn parse_number(token: &str, what: &str) -> Result<f64, String> {
    if token.is_empty() {
        return Err(format!("missing {what}"));
    }
    token
        .parse::<f64>()
        .map_err(|_| format!("{what} {token:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sample(name: &str, pairs: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels(pairs),
            value,
        }
    }

    const PROMETHEUS: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# A summary with a NaN quantile and a trailing comma in the labels.
rpc_duration_seconds{quantile="0.99",} NaN
rpc_duration_seconds{ quantile = "0.5" } -Inf
"#;

    #[test]
    fn prometheus_text() -> Result<(), MetricsError> {
        let got = parse(PROMETHEUS)?;
        assert_eq!(got.len(), 11);
        assert_eq!(
            got[0],
            sample(
                "http_requests_total",
                &[("method", "post"), ("code", "200")],
                1027.0
            )
        );
        assert_eq!(got[1].value, 3.0);
        assert_eq!(
            got[2],
            sample(
                "msdos_file_access_time_seconds",
                &[
                    ("path", r"C:\DIR\FILE.TXT"),
                    ("error", "Cannot find file:\n\"FILE.TXT\""),
                ],
                1.458255915e9,
            )
        );
        assert_eq!(
            got[3],
            sample("metric_without_timestamp_and_labels", &[], 12.47)
        );
        assert_eq!(got[4].value, f64::INFINITY);
        assert_eq!(got[6].labels, labels(&[("le", "+Inf")]));
        assert!(got[9].value.is_nan());
        assert_eq!(got[9].labels, labels(&[("quantile", "0.99")]));
        assert_eq!(got[10].value, f64::NEG_INFINITY);
        assert_eq!(got[10].labels, labels(&[("quantile", "0.5")]));
        Ok(())
    }

    /// What the reference sink (prometheus_client) serves, plus OpenMetrics extras.
    const OPENMETRICS: &str = r#"# HELP ingest_messages Messages received.
# TYPE ingest_messages counter
ingest_messages_total{transport="udp"} 3988
ingest_messages_total{transport="tcp"} 804
ingest_messages_created{transport="udp"} 1.7e9
# HELP ingest_errors Receive errors.
# TYPE ingest_errors counter
ingest_errors_total{reason="frame"} 0
ingest_errors_total{reason="injected"} 25
# HELP ingest_tcp_connections Open TCP connections.
# TYPE ingest_tcp_connections gauge
ingest_tcp_connections 2
# HELP ingest Sink identity.
# TYPE ingest info
ingest_info{name="blue \"b\""} 1
# TYPE acme_bytes counter
# UNIT acme_bytes bytes
acme_bytes_total 1.5e3 1520879607.789 # {trace_id="KOO5S4vxi0o"} 0.67
{"my.dotted.metric", "service.name"="x"} 7
# EOF
"#;

    #[test]
    fn openmetrics_text() -> Result<(), MetricsError> {
        let got = parse(OPENMETRICS)?;
        assert_eq!(got.len(), 9);
        assert_eq!(
            got[0],
            sample("ingest_messages_total", &[("transport", "udp")], 3988.0)
        );
        assert_eq!(
            got[6],
            sample("ingest_info", &[("name", "blue \"b\"")], 1.0)
        );
        assert_eq!(got[7], sample("acme_bytes_total", &[], 1500.0));
        assert_eq!(
            got[8],
            sample("my.dotted.metric", &[("service.name", "x")], 7.0)
        );

        let all = BTreeMap::new();
        assert_eq!(sum(&got, "ingest_messages_total", &all), Some(4792.0));
        let tcp = labels(&[("transport", "tcp")]);
        assert_eq!(sum(&got, "ingest_messages_total", &tcp), Some(804.0));
        let injected = labels(&[("reason", "injected")]);
        assert_eq!(sum(&got, "ingest_errors_total", &injected), Some(25.0));
        // No such series: no data, not zero.
        assert_eq!(
            sum(&got, "ingest_errors_total", &labels(&[("reason", "x")])),
            None
        );
        assert_eq!(sum(&got, "absent_total", &all), None);
        // The counter's family name is not a sample name.
        assert_eq!(sum(&got, "ingest_messages", &all), None);
        // Empty wanted value matches the absent label.
        assert_eq!(
            sum(&got, "ingest_tcp_connections", &labels(&[("pod", "")])),
            Some(2.0)
        );
        Ok(())
    }

    #[test]
    fn crlf_and_blank_lines() -> Result<(), MetricsError> {
        let got = parse("a 1\r\n\r\n  b{x=\"y\"}\t2\r\n")?;
        assert_eq!(
            got,
            vec![sample("a", &[], 1.0), sample("b", &[("x", "y")], 2.0)]
        );
        assert_eq!(parse("")?, Vec::new());
        Ok(())
    }

    #[test]
    fn malformed_lines_are_rejected_with_the_line() {
        let cases: &[(&str, &str)] = &[
            ("ok 1\nbroken\n", "line 2: missing value"),
            ("x abc", "value \"abc\" is not a number"),
            ("x{a=\"1\" 2", "expected ',' or '}' after a label"),
            ("x{a=\"1", "label a: unterminated quoted string"),
            ("x{a=\"\\t\"} 1", "invalid escape \\t"),
            ("x{a=\"1\",a=\"2\"} 1", "duplicate label a"),
            ("x{a} 1", "expected '=' after label a"),
            ("x{a=1} 1", "label a: expected '\"'"),
            ("x{9a=\"1\"} 1", "expected a label name"),
            ("9x 1", "expected a metric name"),
            ("x 1 2 3", "unexpected text after the value"),
            ("x 1 now", "timestamp \"now\" is not a number"),
            ("x{} ", "missing value"),
            ("x{=\"1\"} 1", "expected a label name"),
            ("{a=\"1\"} 1", "no metric name in the braces"),
            ("x-y 1", "expected a blank before the value"),
            ("x 1\n# EOF\ny 2\n", "line 3: data after # EOF"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Ok(s) => panic!("{text:?} accepted: {s:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{text:?}: {msg}");
                    assert!(msg.starts_with("metrics line "), "{msg}");
                }
            }
        }
    }

    #[test]
    fn long_bad_lines_are_quoted_short() {
        let line = format!("x {}", "9".repeat(1000)) + "z";
        match parse(&line) {
            Err(MetricsError::Parse { text, .. }) => assert!(text.chars().count() <= QUOTE_MAX + 1),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn scrape_from_a_local_server() -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            // Two requests: metrics (chunked, to exercise the client), then a 500.
            for status in ["200 OK", "500 Internal Server Error"] {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = OPENMETRICS;
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            }
        });
        let url = format!("http://{addr}/metrics");
        let got = scrape(&url, Duration::from_secs(2)).await?;
        assert_eq!(got.len(), 9);
        match scrape(&url, Duration::from_secs(2)).await {
            Err(MetricsError::Status { status: 500, .. }) => {}
            other => panic!("expected status 500, got {other:?}"),
        }
        // The server has answered both and dropped its listener.
        server.await?;
        // Nothing listening any more: a fetch error, not a panic or a hang.
        match scrape(&url, Duration::from_secs(2)).await {
            Err(MetricsError::Fetch(_)) => {}
            other => panic!("expected a fetch error, got {other:?}"),
        }
        Ok(())
    }
}
