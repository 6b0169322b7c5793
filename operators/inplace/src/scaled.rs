//! Counts given as a number or a percent of replicas.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolves `value` against `total`: a count as is (at most `total`), a percent
/// rounded down. `None` gives `default`. A malformed value (the CRD's CEL rule
/// rejects these; old objects may still hold one) is an error naming it.
pub fn resolve(value: Option<&IntOrString>, total: i32, default: i32) -> Result<i32, String> {
    let n = match value {
        None => default,
        Some(IntOrString::Int(n)) if *n >= 0 => *n,
        Some(IntOrString::String(s)) => {
            let percent = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .filter(|p| (0..=100).contains(p))
                .ok_or_else(|| format!("{s:?} is not a percentage from 0% to 100%"))?;
            (percent * i64::from(total) / 100) as i32
        }
        Some(IntOrString::Int(n)) => return Err(format!("{n} is negative")),
    };
    Ok(n.min(total.max(0)))
}

/// Like [`resolve`], but a percent rounds up (so 1% of any replicas is at
/// least one pod); `None` gives 0.
pub fn resolve_up(value: Option<&IntOrString>, total: i32) -> Result<i32, String> {
    match value {
        Some(IntOrString::String(s)) => {
            let down = resolve(value, total, 0)?;
            let exact = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()).unwrap_or(0) * i64::from(total);
            Ok(if exact % 100 == 0 { down } else { down + 1 }.min(total.max(0)))
        }
        _ => resolve(value, total, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn counts_and_percents_resolve_against_the_total() {
        assert_eq!(resolve(None, 10, 1), Ok(1));
        assert_eq!(resolve(Some(&IntOrString::Int(3)), 10, 1), Ok(3));
        assert_eq!(resolve(Some(&IntOrString::Int(30)), 10, 1), Ok(10), "capped at the total");
        assert_eq!(resolve(Some(&s("25%")), 10, 1), Ok(2), "rounded down");
        assert_eq!(resolve(Some(&s("100%")), 7, 1), Ok(7));
        assert_eq!(resolve(Some(&s("0%")), 7, 1), Ok(0));
        // A partition below 100% always leaves at least one pod to update.
        for total in 1..50 {
            assert!(resolve(Some(&s("99%")), total, 0).unwrap() < total, "{total}");
        }
    }

    #[test]
    fn rounding_up_never_gives_zero_for_a_positive_percent() {
        assert_eq!(resolve_up(Some(&s("1%")), 10), Ok(1));
        assert_eq!(resolve_up(Some(&s("25%")), 10), Ok(3));
        assert_eq!(resolve_up(Some(&s("50%")), 10), Ok(5));
        assert_eq!(resolve_up(Some(&s("0%")), 10), Ok(0));
        assert_eq!(resolve_up(Some(&IntOrString::Int(4)), 3), Ok(3));
        assert_eq!(resolve_up(None, 3), Ok(0));
        assert!(resolve_up(Some(&s("x%")), 3).is_err());
    }

    #[test]
    fn malformed_values_say_what_is_wrong() {
        assert_eq!(resolve(Some(&s("150%")), 10, 1), Err("\"150%\" is not a percentage from 0% to 100%".into()));
        assert_eq!(resolve(Some(&s("ten")), 10, 1), Err("\"ten\" is not a percentage from 0% to 100%".into()));
        assert_eq!(resolve(Some(&IntOrString::Int(-1)), 10, 1), Err("-1 is negative".into()));
    }
}
