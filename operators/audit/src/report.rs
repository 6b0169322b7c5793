//! A report as a table (for people) or JSON (for tools).

use crate::{Report, Severity};

impl Report {
    /// One line per finding under a header, then a summary line.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .findings
            .iter()
            .map(|f| {
                let severity = match f.severity {
                    Severity::Violation => "violation",
                    Severity::Warning => "warning",
                };
                [severity.to_string(), format!("{:?}", f.kind), f.object.to_string(), f.message.clone()]
            })
            .collect();
        let header = ["SEVERITY", "KIND", "OBJECT", "MESSAGE"].map(String::from);
        let mut widths = [0; 3];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        if !rows.is_empty() {
            for row in std::iter::once(&header).chain(&rows) {
                let line = format!(
                    "{:w0$}  {:w1$}  {:w2$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                );
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        let c = self.checked;
        out.push_str(&format!(
            "{} violations, {} warnings ({} nodes, {} pods, {} InplaceSets checked)\n",
            self.violations().count(),
            self.warnings().count(),
            c.nodes,
            c.pods,
            c.inplacesets
        ));
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }
}

#[cfg(test)]
mod tests {
    use crate::{Checked, Finding, Kind, ObjectRef, Report};

    fn report() -> Report {
        Report {
            checked: Checked { nodes: 3, pods: 10, inplacesets: 1 },
            findings: vec![
                Finding::violation(
                    Kind::NodeOvercommit,
                    ObjectRef::node("n0"),
                    "cpu requested 9000m > allocatable 8000m",
                ),
                Finding::warning(
                    Kind::PreferredAffinity,
                    ObjectRef::namespaced("InplaceSet", "a", "web"),
                    "100 of 100",
                ),
            ],
        }
    }

    #[test]
    fn the_table_aligns_columns_and_sums_up() {
        assert_eq!(
            report().table(),
            "SEVERITY   KIND               OBJECT            MESSAGE\n\
             violation  NodeOvercommit     Node n0           cpu requested 9000m > allocatable 8000m\n\
             warning    PreferredAffinity  InplaceSet a/web  100 of 100\n\
             1 violations, 1 warnings (3 nodes, 10 pods, 1 InplaceSets checked)\n"
        );
        assert_eq!(Report::default().table(), "0 violations, 0 warnings (0 nodes, 0 pods, 0 InplaceSets checked)\n");
    }

    #[test]
    fn json_names_severity_kind_and_object() {
        let v: serde_json::Value = serde_json::from_str(&report().json()).unwrap();
        assert_eq!(v["findings"][0]["severity"], "violation");
        assert_eq!(v["findings"][0]["kind"], "NodeOvercommit");
        assert_eq!(v["findings"][0]["object"], serde_json::json!({"kind": "Node", "name": "n0"}));
        assert_eq!(v["findings"][1]["object"]["namespace"], "a");
        assert_eq!(v["checked"]["pods"], 10);
    }
}
