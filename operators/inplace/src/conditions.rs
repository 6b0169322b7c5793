//! Status conditions as every berth controller writes them.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Builds conditions that keep their last transition time from `previous`
/// while their status is unchanged.
pub struct Conditions<'a> {
    pub previous: &'a [Condition],
    pub generation: Option<i64>,
    pub now: Timestamp,
}

impl Conditions<'_> {
    /// Condition `type_`, True when `ok`.
    pub fn set(&self, type_: &str, ok: bool, reason: &str, message: String) -> Condition {
        let status = if ok { "True" } else { "False" };
        let old = self.previous.iter().find(|c| c.type_ == type_ && c.status == status);
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time: old.map_or_else(|| Time(self.now), |c| c.last_transition_time.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_status_keeps_its_transition_time() {
        let before: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-11-22T11:00:00Z".parse().unwrap();
        let first = Conditions { previous: &[], generation: Some(1), now: before }.set("Ready", true, "Up", "".into());
        let previous = [first];
        let c = Conditions { previous: &previous, generation: Some(2), now };
        assert_eq!(c.set("Ready", true, "Up", "".into()).last_transition_time, Time(before));
        assert_eq!(c.set("Ready", false, "Down", "".into()).last_transition_time, Time(now));
        assert_eq!(c.set("Ready", true, "Up", "".into()).observed_generation, Some(2));
    }
}
