//! Output shared by the sections: aligned text tables for the terminal, markdown tables for
//! `<out>/results.md`, and the percentiles every latency section reports.

/// A table with a header row; cells are already formatted.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Columns padded to their widest cell; first column left-aligned, the rest right-aligned.
    pub fn text(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = indent.to_string();
            for (i, c) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let pad = " ".repeat(w.saturating_sub(c.chars().count()));
                if i == 0 {
                    s += &format!("{c}{pad}");
                } else {
                    s += &format!("  {pad}{c}");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        for r in &self.rows {
            out += &line(r);
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        out += &format!(
            "|{}\n",
            self.headers
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for r in &self.rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
        out
    }
}

/// The `p`-th percentile (nearest rank) of `v`, which it sorts; NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// p50 / p99 / max of samples in ns, as µs, for JSON.
pub fn latency_us(v: &mut [f64]) -> serde_json::Value {
    serde_json::json!({
        "p50": percentile(v, 50.0) / 1000.0,
        "p99": percentile(v, 99.0) / 1000.0,
        "max": percentile(v, 100.0) / 1000.0,
        "samples": v.len(),
    })
}

/// Median and range of repeated measurements of one figure.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        let mut s = v.to_vec();
        let median = percentile(&mut s, 50.0);
        Spread {
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
            n: s.len(),
        }
    }

    /// For a ratio: "no difference" when its range holds 1.0.
    pub fn verdict(&self, below: &'static str, above: &'static str) -> &'static str {
        if self.min <= 1.0 && self.max >= 1.0 {
            "no difference"
        } else if self.max < 1.0 {
            below
        } else {
            above
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }
}

/// A JSON number with `decimals` decimals, or "–" when absent.
pub fn num(v: &serde_json::Value, decimals: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{x:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }

    #[test]
    fn spread_and_its_verdict() {
        let s = Spread::of(&[0.9, 0.4, 0.5]);
        assert_eq!((s.median, s.min, s.max, s.n), (0.5, 0.4, 0.9, 3));
        assert_eq!(s.verdict("lower", "higher"), "lower");
        assert_eq!(
            Spread::of(&[0.9, 1.1]).verdict("lower", "higher"),
            "no difference"
        );
        assert_eq!(Spread::of(&[1.2, 1.1]).verdict("lower", "higher"), "higher");
    }

    #[test]
    fn markdown_has_separator_row() {
        let mut t = Table::new(&["case", "ns"]);
        t.row(vec!["a".into(), "1.0".into()]);
        assert_eq!(t.markdown(), "| case | ns |\n|---|---:|\n| a | 1.0 |\n");
    }
}
