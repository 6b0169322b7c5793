//! In-place resource update state machine of DESIGN.md §5, stored in the
//! [`crate::keys::RESIZE`] (payload) and [`crate::keys::RESIZE_STATE`]
//! annotations. `None` stands for "no request": the state annotation absent.
//!
//! ```text
//! (none) --Submit--> Created --Accept--> Accepted --Apply--> Applied
//!                            --Reject--> Rejected --Fail/Expire--> Failed
//! Created --Cancel--> (none);  Applied, Rejected, Failed --Submit--> Created
//! ```

use std::{collections::BTreeMap, fmt, str::FromStr};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

/// The node agent's service account (in the manager's namespace): the only
/// identity that may move a request to Applied or Failed.
pub const NODE_AGENT_SERVICE_ACCOUNT: &str = "berth-node-agent";
/// The user-info extra a pod-bound service-account token carries: the node of
/// the pod it is bound to. The node agent may act only on pods of that node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// State of one resize request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResizeState {
    /// Submitted, waiting for the feasibility check.
    Created,
    /// Fits the node; waiting for the node agent.
    Accepted,
    /// Does not fit the node (terminal).
    Rejected,
    /// Running state equals the request (terminal).
    Applied,
    /// The node could not apply it (terminal).
    Failed,
}

/// What moves a resize request between states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeEvent {
    /// A new request: allowed when none is in flight.
    Submit,
    /// The requester withdraws a request nobody has accepted yet.
    Cancel,
    Accept,
    Reject,
    Apply,
    Fail,
    /// The manager gives up on an accepted request past its deadline.
    Expire,
}

/// Who may cause an event. The webhook maps a request's user to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// Anyone allowed to update the pod (a user, or a controller on its behalf).
    Requester,
    /// The manager's service account (feasibility controller).
    Manager,
    /// The node agent of the node the pod is bound to.
    NodeAgent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    #[error("resize event {event:?} is not allowed in state {}; {hint}", state_name(*.from))]
    IllegalEvent { from: Option<ResizeState>, event: ResizeEvent, hint: &'static str },
    #[error("unknown resize state {0:?}; allowed: Created, Accepted, Rejected, Applied, Failed")]
    UnknownState(String),
    #[error("invalid {key} annotation: {reason}", key = crate::keys::RESIZE)]
    InvalidRequest { reason: String },
}

fn state_name(s: Option<ResizeState>) -> &'static str {
    s.map_or("(none)", ResizeState::as_str)
}

impl ResizeState {
    pub const ALL: [ResizeState; 5] = [Self::Created, Self::Accepted, Self::Rejected, Self::Applied, Self::Failed];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Accepted => "Accepted",
            Self::Rejected => "Rejected",
            Self::Applied => "Applied",
            Self::Failed => "Failed",
        }
    }

    /// A terminal state ends a request; a new one may be submitted.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Rejected | Self::Applied | Self::Failed)
    }
}

impl ResizeEvent {
    pub const ALL: [ResizeEvent; 7] =
        [Self::Submit, Self::Cancel, Self::Accept, Self::Reject, Self::Apply, Self::Fail, Self::Expire];

    /// The only actor who may cause this event.
    pub const fn actor(self) -> Actor {
        match self {
            Self::Submit | Self::Cancel => Actor::Requester,
            Self::Accept | Self::Reject | Self::Expire => Actor::Manager,
            Self::Apply | Self::Fail => Actor::NodeAgent,
        }
    }

    /// Whether `actor` may cause this event: its own actor, and also the
    /// manager for Submit and Cancel (the InplaceSet controller rolls a
    /// resources-only template change as resize requests).
    pub fn allows(self, actor: Actor) -> bool {
        self.actor() == actor || (matches!(self, Self::Submit | Self::Cancel) && actor == Actor::Manager)
    }

    /// The events that turn `from` into `to` (several may: Fail and Expire).
    pub fn between(from: Option<ResizeState>, to: Option<ResizeState>) -> Vec<ResizeEvent> {
        Self::ALL.into_iter().filter(|e| transition(from, *e) == Ok(to)).collect()
    }
}

/// The one transition function.
pub fn transition(from: Option<ResizeState>, event: ResizeEvent) -> Result<Option<ResizeState>, ResizeError> {
    use ResizeEvent as E;
    use ResizeState as S;
    let illegal = |hint| Err(ResizeError::IllegalEvent { from, event, hint });
    match (from, event) {
        (None, E::Submit) => Ok(Some(S::Created)),
        (Some(S::Rejected | S::Applied | S::Failed), E::Submit) => Ok(Some(S::Created)),
        (Some(S::Created | S::Accepted), E::Submit) => {
            illegal("a request is in flight: wait for Applied, Rejected or Failed, or cancel it while Created")
        }
        (Some(S::Created), E::Cancel) => Ok(None),
        (_, E::Cancel) => illegal("only a Created request can be cancelled"),
        (Some(S::Created), E::Accept) => Ok(Some(S::Accepted)),
        (Some(S::Created), E::Reject) => Ok(Some(S::Rejected)),
        (_, E::Accept | E::Reject) => illegal("only a Created request can be accepted or rejected"),
        (Some(S::Accepted), E::Apply) => Ok(Some(S::Applied)),
        (Some(S::Accepted), E::Fail | E::Expire) => Ok(Some(S::Failed)),
        (_, E::Apply | E::Fail | E::Expire) => illegal("only an Accepted request can be applied or fail"),
    }
}

impl fmt::Display for ResizeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResizeState {
    type Err = ResizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| ResizeError::UnknownState(s.to_string()))
    }
}

/// The payload of the [`crate::keys::RESIZE`] annotation: desired resources
/// per container name, and an optional exclusive-CPU policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResizeRequest {
    /// Container name → desired requests and limits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub containers: BTreeMap<String, ContainerResources>,
    /// Pin the pod's containers to exclusive CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<CpusetPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpusetPolicy {
    /// Number of whole CPUs given exclusively to the pod.
    pub exclusive_cpus: u32,
}

/// The payload of [`crate::keys::RESIZE_APPLIED`]: per container, the
/// values the node agent read back from the container's cgroup after a
/// resize it made through CRI (absent fields were left alone).
pub type AppliedResources = BTreeMap<String, AppliedContainer>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedContainer {
    /// CFS quota in microseconds per period (-1: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<i64>,
    /// cgroup v1 cpu.shares (on v2, the weight converted back to shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    /// Bytes (-1: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<i64>,
    /// Exclusive CPUs, in cpuset list form ("2-3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
}

/// The largest [`crate::keys::RESIZE`] value accepted: room for every
/// container of any real pod, and a bound on what each admission parses.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Resources a resize may change.
pub const RESIZABLE_RESOURCES: [&str; 2] = ["cpu", "memory"];

impl FromStr for ResizeRequest {
    type Err = ResizeError;

    /// Parses the annotation value; checks shape only (quantities against
    /// the pod are checked where the pod is known).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ResizeError::InvalidRequest { reason };
        if s.len() > MAX_REQUEST_BYTES {
            return Err(invalid(format!(
                "is {} bytes; at most {MAX_REQUEST_BYTES} bytes are accepted (one entry per container to resize)",
                s.len()
            )));
        }
        let req: ResizeRequest = serde_json::from_str(s).map_err(|e| {
            invalid(format!(
                "{e}; expected JSON like {{\"containers\":{{\"app\":{{\"requests\":{{\"cpu\":\"500m\"}},\"limits\":{{\"memory\":\"1Gi\"}}}}}},\"cpuset\":{{\"exclusiveCpus\":2}}}}"
            ))
        })?;
        if req.containers.is_empty() && req.cpuset.is_none() {
            return Err(invalid("names no container and no cpuset: nothing to change".into()));
        }
        for (name, res) in &req.containers {
            for resource in res.requests.keys().chain(res.limits.keys()) {
                if !RESIZABLE_RESOURCES.contains(&resource.as_str()) {
                    return Err(invalid(format!(
                        "container {name:?}: resource {resource:?} cannot be resized in place; allowed: cpu, memory"
                    )));
                }
            }
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::{ResizeEvent as E, ResizeState as S, *};

    fn states() -> Vec<Option<S>> {
        std::iter::once(None).chain(S::ALL.map(Some)).collect()
    }

    /// The whole table, written out once: every (state, event) pair.
    fn expected(from: Option<S>, event: E) -> Option<Option<S>> {
        Some(match (from, event) {
            (None | Some(S::Rejected | S::Applied | S::Failed), E::Submit) => Some(S::Created),
            (Some(S::Created), E::Cancel) => None,
            (Some(S::Created), E::Accept) => Some(S::Accepted),
            (Some(S::Created), E::Reject) => Some(S::Rejected),
            (Some(S::Accepted), E::Apply) => Some(S::Applied),
            (Some(S::Accepted), E::Fail | E::Expire) => Some(S::Failed),
            _ => return None,
        })
    }

    #[test]
    fn an_oversized_request_is_refused_before_it_is_parsed() {
        let small = r#"{"containers":{"app":{"requests":{"cpu":"1"}}}}"#;
        let padded = format!("{small}{}", " ".repeat(MAX_REQUEST_BYTES - small.len()));
        assert!(padded.parse::<ResizeRequest>().is_ok(), "exactly the limit is fine");
        let err = format!("{padded} ").parse::<ResizeRequest>().unwrap_err().to_string();
        assert!(err.contains(&format!("is {} bytes; at most 16384 bytes", MAX_REQUEST_BYTES + 1)), "{err}");
    }

    #[test]
    fn every_state_event_pair_matches_the_table() {
        let mut legal = 0;
        for from in states() {
            for event in E::ALL {
                match (transition(from, event), expected(from, event)) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{from:?} on {event:?}");
                        legal += 1;
                    }
                    (Err(ResizeError::IllegalEvent { from: f, event: e, hint }), None) => {
                        assert_eq!((f, e), (from, event));
                        assert!(!hint.is_empty());
                    }
                    (got, want) => panic!("{from:?} on {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 10, "number of legal transitions");
    }

    #[test]
    fn each_event_has_one_actor() {
        assert_eq!(E::Submit.actor(), Actor::Requester);
        assert_eq!(E::Cancel.actor(), Actor::Requester);
        assert_eq!(E::Accept.actor(), Actor::Manager);
        assert_eq!(E::Reject.actor(), Actor::Manager);
        assert_eq!(E::Expire.actor(), Actor::Manager);
        assert_eq!(E::Apply.actor(), Actor::NodeAgent);
        assert_eq!(E::Fail.actor(), Actor::NodeAgent);
        // Who else: the manager submits and cancels for InplaceSet rollouts; nobody else doubles up.
        for e in E::ALL {
            for a in [Actor::Requester, Actor::Manager, Actor::NodeAgent] {
                let extra = matches!(e, E::Submit | E::Cancel) && a == Actor::Manager;
                assert_eq!(e.allows(a), e.actor() == a || extra, "{e:?} by {a:?}");
            }
        }
    }

    #[test]
    fn between_finds_every_event_for_a_change() {
        assert_eq!(E::between(Some(S::Accepted), Some(S::Failed)), vec![E::Fail, E::Expire]);
        assert_eq!(E::between(Some(S::Created), Some(S::Accepted)), vec![E::Accept]);
        assert_eq!(E::between(Some(S::Applied), Some(S::Created)), vec![E::Submit]);
        assert!(E::between(Some(S::Created), Some(S::Applied)).is_empty());
        assert!(E::between(None, Some(S::Accepted)).is_empty());
    }

    #[test]
    fn resubmitting_in_flight_says_what_to_do() {
        let err = transition(Some(S::Accepted), E::Submit).unwrap_err().to_string();
        assert!(
            err.starts_with("resize event Submit is not allowed in state Accepted; a request is in flight"),
            "{err}"
        );
    }

    #[test]
    fn parses_a_request_and_round_trips() {
        let raw = r#"{"containers":{"app":{"requests":{"cpu":"500m"},"limits":{"cpu":"1","memory":"1Gi"}}},"cpuset":{"exclusiveCpus":2}}"#;
        let req: ResizeRequest = raw.parse().unwrap();
        assert_eq!(req.containers["app"].requests["cpu"], Quantity("500m".into()));
        assert_eq!(req.cpuset, Some(CpusetPolicy { exclusive_cpus: 2 }));
        assert_eq!(serde_json::to_string(&req).unwrap(), raw);
    }

    #[test]
    fn rejects_bad_requests_with_the_reason() {
        let cases = [
            ("not json", "expected JSON like"),
            (r#"{"containers":{}}"#, "nothing to change"),
            (r#"{"containers":{"app":{"requests":{"nvidia.com/gpu":"1"}}}}"#, "allowed: cpu, memory"),
            (r#"{"containers":{"app":{"request":{}}}}"#, "unknown field `request`"),
            (r#"{"cpuset":{"exclusiveCpus":-1}}"#, "invalid value"),
        ];
        for (raw, want) in cases {
            let err = raw.parse::<ResizeRequest>().unwrap_err().to_string();
            assert!(err.starts_with("invalid berth.dev/resize annotation: "), "{err}");
            assert!(err.contains(want), "{raw}: {err}");
        }
        assert!("Accepted".parse::<S>().is_ok());
        assert!("accepted".parse::<S>().unwrap_err().to_string().contains("allowed: Created"));
    }
}
