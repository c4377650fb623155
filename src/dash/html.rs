//! Small pieces of HTML: escaping, links, times and durations, and the SVG charts (drawn here,
//! so that they need no script).
use super::data::Chart;
use std::fmt::Write;

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a path segment or a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The page of a task.
pub fn task_href(id: &str) -> String {
    format!("/tasks/{}", enc(id))
}

pub fn task_link(id: &str) -> String {
    format!("<a class=\"id\" href=\"{}\">{}</a>", task_href(id), esc(id))
}

/// A duration for people: "850 ms", "12.3 s", "4 min 10 s", "2 h 5 min".
pub fn dur(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A wall-clock instant as UTC, `2026-12-02 20:31:05Z`.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// An instant, shown as how long ago it was on this node's clock, with the UTC time on hover.
pub fn ago(unix_ms: u64, now_unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "–".into();
    }
    let when = utc(unix_ms);
    let text = if unix_ms > now_unix_ms {
        format!("in {}", dur(unix_ms - now_unix_ms))
    } else {
        format!("{} ago", dur(now_unix_ms - unix_ms))
    };
    format!("<time title=\"{when}\" datetime=\"{when}\">{text}</time>")
}

/// A badge for a task state (or an attempt outcome).
pub fn badge(state: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(state))
}

/// A latency histogram as bars, one per bucket, labelled at powers of ten.
pub fn chart_svg(c: &Chart, label: &str) -> String {
    if c.total == 0 {
        return format!("<p class=\"muted\">no {} yet</p>", esc(label));
    }
    let (w, h, bar) = (340, 80, 20);
    let max = c.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut s = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"{}\">",
        h + 16,
        h + 16,
        esc(label)
    );
    for (i, n) in c.counts.iter().enumerate() {
        let bh = ((*n as f64 / max) * h as f64).round() as i64;
        let x = i * bar;
        let upto = match c.bounds_ms.get(i) {
            Some(b) => format!("≤ {}", dur(*b)),
            None => format!("> {}", dur(*c.bounds_ms.last().unwrap_or(&0))),
        };
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{bh}\"><title>{upto}: {n}</title></rect>",
            h as i64 - bh,
            bar - 2
        );
    }
    for (i, text) in [(0, "1ms"), (3, "8ms"), (7, "128ms"), (10, "1s"), (13, "8s")] {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\">{text}</text>", i * bar, h + 13);
    }
    s.push_str("</svg>");
    let q = |v: Option<u64>| v.map(dur).unwrap_or_else(|| "–".into());
    let _ = write!(
        s,
        "<div class=\"muted\">{}: {} samples, p50 ≤ {}, p99 ≤ {}</div>",
        esc(label),
        c.total,
        q(c.p50_ms),
        q(c.p99_ms)
    );
    s
}

/// Per-second counts as a small line.
pub fn sparkline(values: &[u64]) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let (w, h) = (120.0, 24.0);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = w / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - (*v as f64 / max) * (h - 2.0) - 1.0
            )
        })
        .collect();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"finished per second, last minute\"><polyline points=\"{}\"/></svg>",
        points.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_encodes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(enc("a b/c?d#é"), "a%20b%2Fc%3Fd%23%C3%A9");
    }

    #[test]
    fn utc_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_798_230_665_000), "2026-12-25 20:31:05Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(dur(850), "850 ms");
        assert_eq!(dur(12_345), "12.3 s");
        assert_eq!(dur(250_000), "4 min 10 s");
    }

    #[test]
    fn a_chart_has_a_bar_per_bucket() {
        let mut counts = vec![0; crate::metrics::CHART_BUCKETS];
        counts[3] = 10;
        counts[16] = 1;
        let c = Chart::new(counts);
        assert_eq!(c.p50_ms, Some(8));
        let svg = chart_svg(&c, "x");
        assert_eq!(svg.matches("<rect").count(), crate::metrics::CHART_BUCKETS);
        assert!(svg.contains("> 32.8 s: 1"), "{svg}");
    }
}
