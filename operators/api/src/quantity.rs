//! Resource quantities as numbers: CPU in millicores, memory in bytes, the
//! way the kubelet and scheduler round them (CPU up to the millicore).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity's value: a decimal number times its suffix's multiplier.
fn value(q: &str) -> Result<f64, String> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{q:?} is not a quantity such as 500m, 2, 1.5Gi or 512Mi"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            10f64.powi(s[1..].parse::<i32>().map_err(|_| format!("{q:?}: bad exponent {s:?}"))?)
        }
        other => {
            return Err(format!(
                "{q:?}: unknown suffix {other:?}; allowed: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei"
            ));
        }
    };
    let v = number * multiplier;
    if v < 0.0 || !v.is_finite() {
        return Err(format!("{q:?} is negative or out of range"));
    }
    Ok(v)
}

/// CPU in millicores, rounded up (as the apiserver does: 0.1m is 1m).
pub fn millicores(q: &Quantity) -> Result<i64, String> {
    Ok((value(&q.0)? * 1000.0 - 1e-9).ceil().max(0.0) as i64)
}

/// Memory (or any byte count) in bytes, rounded up.
pub fn bytes(q: &Quantity) -> Result<i64, String> {
    Ok((value(&q.0)? - 1e-9).ceil().max(0.0) as i64)
}

/// `resource`'s amount in its base unit: millicores for cpu, bytes otherwise.
pub fn amount(resource: &str, q: &Quantity) -> Result<i64, String> {
    if resource == "cpu" { millicores(q) } else { bytes(q) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn cpu_and_memory_in_their_base_units() {
        assert_eq!(millicores(&q("500m")), Ok(500));
        assert_eq!(millicores(&q("2")), Ok(2000));
        assert_eq!(millicores(&q("1.5")), Ok(1500));
        assert_eq!(millicores(&q("0.0001")), Ok(1), "rounded up to a millicore");
        assert_eq!(bytes(&q("1Gi")), Ok(1 << 30));
        assert_eq!(bytes(&q("512Mi")), Ok(512 << 20));
        assert_eq!(bytes(&q("1G")), Ok(1_000_000_000));
        assert_eq!(bytes(&q("128974848")), Ok(128974848));
        assert_eq!(bytes(&q("1e3")), Ok(1000));
        assert_eq!(amount("cpu", &q("250m")), Ok(250));
        assert_eq!(amount("memory", &q("1Ki")), Ok(1024));
    }

    #[test]
    fn malformed_quantities_say_what_is_allowed() {
        assert!(millicores(&q("lots")).unwrap_err().contains("not a quantity"));
        assert!(bytes(&q("1Gb")).unwrap_err().contains("unknown suffix \"Gb\""));
        assert!(bytes(&q("-1Gi")).unwrap_err().contains("negative"));
    }
}
