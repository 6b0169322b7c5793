//! Aligned columns, kubectl style, and ages.

use k8s_openapi::jiff::Timestamp;

/// Rows under headers, each column as wide as its widest cell, three spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// kubectl's short age: 45s, 12m, 5h, 3d.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(since).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Millicores as kubectl shows CPU: 1500m, 2.
pub fn cpu(millicores: i64) -> String {
    if millicores % 1000 == 0 { format!("{}", millicores / 1000) } else { format!("{millicores}m") }
}

/// Bytes in the largest binary unit that divides them: 256Mi, 32Gi.
pub fn memory(bytes: i64) -> String {
    for (unit, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes != 0 && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let out = table(&["NAME", "NODE"], &[vec!["web-10".into(), "n1".into()], vec!["web-2".into(), "".into()]]);
        assert_eq!(out, "NAME     NODE\nweb-10   n1\nweb-2\n");
    }

    #[test]
    fn ages_and_quantities_read_like_kubectl() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let now = t("2026-11-23T12:00:00Z");
        assert_eq!(age(t("2026-11-23T11:59:15Z"), now), "45s");
        assert_eq!(age(t("2026-11-23T11:48:00Z"), now), "12m");
        assert_eq!(age(t("2026-11-23T07:00:00Z"), now), "5h");
        assert_eq!(age(t("2026-11-20T12:00:00Z"), now), "3d");
        assert_eq!(cpu(1500), "1500m");
        assert_eq!(cpu(8000), "8");
        assert_eq!(memory(256 << 20), "256Mi");
        assert_eq!(memory(32 << 30), "32Gi");
        assert_eq!(memory(1000), "1000");
    }
}
