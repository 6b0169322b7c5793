//! Whether a pod's in-place update has completed, judged from the pod alone.

use std::collections::BTreeMap;

use berth_api::{inplace::InPlaceUpdateState, keys, resize::ResizeState};
use k8s_openapi::{
    api::core::v1::{ContainerStatus, Pod},
    jiff::{SignedDuration, Timestamp},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The pod records no in-place update.
    Idle,
    /// Changed containers not back yet: name → what is awaited.
    InProgress { revision: String, started: Timestamp, waiting: BTreeMap<String, String> },
    /// Every changed container runs anew and is ready.
    Done { revision: String },
    /// The resize phase of an update is Applied: the rest of the update (images,
    /// labels, revision label) is next.
    Resized { revision: String },
    /// The resize phase was Rejected or Failed: the pod still runs its old
    /// revision; the workload recreates it or stops, per its strategy.
    Refused { revision: String, reason: String },
}

impl Progress {
    /// An update still in progress `deadline` after it started: the caller
    /// reports it (condition, Event) rather than wait forever.
    pub fn is_overdue(&self, now: Timestamp, deadline: SignedDuration) -> bool {
        matches!(self, Progress::InProgress { started, .. } if now.duration_since(*started) > deadline)
    }
}

/// Reads the pod's [`keys::INPLACE_UPDATE_STATE`] and its container statuses.
pub fn progress(pod: &Pod) -> Result<Progress, String> {
    let Some(raw) = pod.metadata.annotations.as_ref().and_then(|a| a.get(keys::INPLACE_UPDATE_STATE)) else {
        return Ok(Progress::Idle);
    };
    let state = InPlaceUpdateState::parse(raw)?;
    let started = state.update_timestamp.parse::<Timestamp>().map_err(|e| {
        format!("invalid {} annotation: updateTimestamp {:?}: {e}", keys::INPLACE_UPDATE_STATE, state.update_timestamp)
    })?;
    if state.resize {
        return Ok(resize_progress(pod, state.revision, started));
    }
    let status = pod.status.as_ref();
    let statuses: Vec<&ContainerStatus> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(status.and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten())
        .collect();
    let mut waiting = BTreeMap::new();
    for (name, before) in &state.containers {
        let Some(now) = statuses.iter().find(|c| &c.name == name) else {
            waiting.insert(name.clone(), "no status reported".to_string());
            continue;
        };
        let new_container = now.container_id.as_ref().is_some_and(|id| !id.is_empty() && *id != before.container_id);
        let new_image = !now.image_id.is_empty() && now.image_id != before.image_id;
        if !(new_container || new_image) {
            waiting.insert(name.clone(), "still running the container from before the update".to_string());
        } else if !now.ready {
            waiting.insert(name.clone(), "restarted, not ready yet".to_string());
        }
    }
    Ok(if waiting.is_empty() {
        Progress::Done { revision: state.revision }
    } else {
        Progress::InProgress { revision: state.revision, started, waiting }
    })
}

/// Progress of a resize phase, from the request's state on the pod.
fn resize_progress(pod: &Pod, revision: String, started: Timestamp) -> Progress {
    let annotations = pod.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let message = get(keys::RESIZE_MESSAGE).unwrap_or_default();
    let waiting = |why: String| Progress::InProgress {
        revision: revision.clone(),
        started,
        waiting: BTreeMap::from([("resize".to_string(), why)]),
    };
    match get(keys::RESIZE_STATE).map(str::parse::<ResizeState>) {
        Some(Ok(ResizeState::Applied)) => Progress::Resized { revision },
        Some(Ok(ResizeState::Created)) => waiting("Created: waiting for the feasibility check".into()),
        Some(Ok(ResizeState::Accepted)) => waiting("Accepted: waiting for the node agent".into()),
        Some(Ok(state @ (ResizeState::Rejected | ResizeState::Failed))) => {
            Progress::Refused { revision, reason: format!("resize {state}: {message}") }
        }
        Some(Err(e)) => Progress::Refused { revision, reason: e.to_string() },
        None => Progress::Refused {
            revision,
            reason: format!("the resize request was withdrawn ({} removed)", keys::RESIZE_STATE),
        },
    }
}

#[cfg(test)]
mod tests {
    use berth_api::inplace::ContainerBefore;
    use serde_json::json;

    use super::*;

    fn pod(app: (&str, &str, bool), state: Option<&InPlaceUpdateState>) -> Pod {
        let mut annotations = json!({});
        if let Some(s) = state {
            annotations[keys::INPLACE_UPDATE_STATE] = json!(s.to_annotation());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "annotations": annotations},
            "status": {"containerStatuses": [
                {"name": "app", "image": "web", "imageID": app.0, "containerID": app.1, "ready": app.2, "restartCount": 1},
                {"name": "log", "image": "log", "imageID": "sha256:l1", "containerID": "cri://l1", "ready": true, "restartCount": 0}
            ]}
        }))
        .unwrap()
    }

    fn state() -> InPlaceUpdateState {
        InPlaceUpdateState {
            revision: "web-2".into(),
            update_timestamp: "2026-11-22T10:00:00Z".into(),
            containers: BTreeMap::from([(
                "app".into(),
                ContainerBefore { image_id: "sha256:a1".into(), container_id: "cri://c1".into() },
            )]),
            resize: false,
        }
    }

    fn waiting_on(p: Progress) -> BTreeMap<String, String> {
        match p {
            Progress::InProgress { waiting, .. } => waiting,
            other => panic!("expected InProgress, got {other:?}"),
        }
    }

    #[test]
    fn a_resize_phase_follows_the_request_state() {
        let resize_state = InPlaceUpdateState { resize: true, containers: BTreeMap::new(), ..state() };
        let at = |state: Option<&str>, message: &str| {
            let mut p = pod(("sha256:a1", "cri://c1", true), Some(&resize_state));
            let a = p.metadata.annotations.as_mut().unwrap();
            if let Some(s) = state {
                a.insert(keys::RESIZE_STATE.into(), s.into());
            }
            a.insert(keys::RESIZE_MESSAGE.into(), message.into());
            progress(&p).unwrap()
        };
        assert!(waiting_on(at(Some("Created"), ""))["resize"].contains("feasibility"));
        assert!(waiting_on(at(Some("Accepted"), ""))["resize"].contains("node agent"));
        assert_eq!(at(Some("Applied"), "ok"), Progress::Resized { revision: "web-2".into() });
        assert_eq!(
            at(Some("Rejected"), "cpu: 3 requested, 2 allocatable"),
            Progress::Refused {
                revision: "web-2".into(),
                reason: "resize Rejected: cpu: 3 requested, 2 allocatable".into()
            }
        );
        assert!(
            matches!(at(Some("Failed"), "memory below usage"), Progress::Refused { reason, .. } if reason.contains("memory below usage"))
        );
        assert!(matches!(at(None, ""), Progress::Refused { reason, .. } if reason.contains("withdrawn")));
        assert!(
            matches!(at(Some("Done"), ""), Progress::Refused { reason, .. } if reason.contains("unknown resize state"))
        );
    }

    #[test]
    fn a_pod_without_state_is_idle() {
        assert_eq!(progress(&pod(("sha256:a1", "cri://c1", true), None)), Ok(Progress::Idle));
    }

    #[test]
    fn done_once_every_changed_container_runs_anew_and_is_ready() {
        let s = state();
        assert_eq!(
            progress(&pod(("sha256:a2", "cri://c2", true), Some(&s))),
            Ok(Progress::Done { revision: "web-2".into() })
        );
        // Same image ID (a retag) but a new container also counts.
        assert_eq!(
            progress(&pod(("sha256:a1", "cri://c2", true), Some(&s))),
            Ok(Progress::Done { revision: "web-2".into() })
        );
    }

    #[test]
    fn waits_for_the_restart_then_for_readiness() {
        let s = state();
        let old = waiting_on(progress(&pod(("sha256:a1", "cri://c1", true), Some(&s))).unwrap());
        assert_eq!(old["app"], "still running the container from before the update");
        let unready = waiting_on(progress(&pod(("sha256:a2", "cri://c2", false), Some(&s))).unwrap());
        assert_eq!(unready["app"], "restarted, not ready yet");
        let mut gone = state();
        gone.containers.insert("missing".into(), ContainerBefore::default());
        let missing = waiting_on(progress(&pod(("sha256:a2", "cri://c2", true), Some(&gone))).unwrap());
        assert_eq!(missing.keys().collect::<Vec<_>>(), ["missing"]);
    }

    #[test]
    fn an_update_past_its_deadline_is_overdue() {
        let p = progress(&pod(("sha256:a1", "cri://c1", true), Some(&state()))).unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(!p.is_overdue(at("2026-11-22T10:04:59Z"), SignedDuration::from_secs(300)));
        assert!(p.is_overdue(at("2026-11-22T10:05:01Z"), SignedDuration::from_secs(300)));
        assert!(!Progress::Done { revision: "x".into() }.is_overdue(at("2030-01-01T00:00:00Z"), SignedDuration::ZERO));
    }

    #[test]
    fn a_corrupt_annotation_is_an_error_naming_it() {
        let mut p = pod(("sha256:a1", "cri://c1", true), None);
        p.metadata.annotations = Some(BTreeMap::from([(keys::INPLACE_UPDATE_STATE.to_string(), "nope".to_string())]));
        assert!(progress(&p).unwrap_err().starts_with("invalid berth.dev/inplace-update-state annotation"));
    }
}
