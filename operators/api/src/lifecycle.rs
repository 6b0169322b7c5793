//! Pod lifecycle state machine of DESIGN.md §3, stored in the
//! [`crate::keys::LIFECYCLE_STATE`] annotation. Hooks hold a pod in a
//! `Preparing*` or `Updated` state until the user-named label or finalizer
//! clears; the manager is the only writer and the webhook admits only the
//! changes [`LifecycleState::check_change`] allows.

use std::{fmt, str::FromStr};

/// Where a pod is in its managed life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifecycleState {
    /// Created, held by a `preNormal` hook before it counts as serving.
    PreparingNormal,
    /// Serving; no update or deletion in progress.
    Normal,
    /// Chosen for an in-place update, held by a `preUpdate` hook.
    PreparingUpdate,
    /// The in-place update is being applied.
    Updating,
    /// The update completed, held by a `postUpdate` hook.
    Updated,
    /// Chosen for deletion, held by a `preDelete` hook.
    PreparingDelete,
}

/// What moves a pod between lifecycle states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LifecycleEvent {
    PreNormalHookCleared,
    /// An update chosen for a pod a `preUpdate` hook will hold.
    UpdateRequested,
    PreUpdateHookCleared,
    /// An update begins on a pod no `preUpdate` hook holds: straight to
    /// Updating, in the same write as the new containers.
    UpdateStarted,
    /// The update target reverted to the pod's own revision before it began.
    UpdateCancelled,
    /// The update completed on a pod a `postUpdate` hook will hold.
    UpdateCompleted,
    /// The update completed and no `postUpdate` hook holds the pod: straight
    /// back to Normal, in the same write that drops the update record.
    UpdateFinished,
    PostUpdateHookCleared,
    DeleteRequested,
    /// A scale-up reclaimed a pod that was waiting to be deleted.
    DeleteCancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("lifecycle event {event:?} is not allowed in state {from}")]
    IllegalEvent { from: LifecycleState, event: LifecycleEvent },
    #[error("lifecycle state cannot change from {from} to {to}; from {from} it may become: {allowed}")]
    IllegalChange { from: String, to: String, allowed: String },
    #[error("unknown lifecycle state {0:?}; allowed: {allowed}", allowed = LifecycleState::ALL.map(|s| s.as_str()).join(", "))]
    Unknown(String),
}

impl LifecycleState {
    pub const ALL: [LifecycleState; 6] = [
        Self::PreparingNormal,
        Self::Normal,
        Self::PreparingUpdate,
        Self::Updating,
        Self::Updated,
        Self::PreparingDelete,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PreparingNormal => "PreparingNormal",
            Self::Normal => "Normal",
            Self::PreparingUpdate => "PreparingUpdate",
            Self::Updating => "Updating",
            Self::Updated => "Updated",
            Self::PreparingDelete => "PreparingDelete",
        }
    }

    /// The state a newly created pod starts in.
    pub const fn initial(has_pre_normal_hook: bool) -> Self {
        if has_pre_normal_hook { Self::PreparingNormal } else { Self::Normal }
    }

    /// Where a pod goes once its update completed: held in Updated by a
    /// `postUpdate` hook, else straight back to Normal.
    pub const fn after_update(has_post_update_hook: bool) -> Self {
        if has_post_update_hook { Self::Updated } else { Self::Normal }
    }

    /// The one transition function: the state after `event`, or why not.
    pub fn on(self, event: LifecycleEvent) -> Result<Self, LifecycleError> {
        use LifecycleEvent as E;
        use LifecycleState as S;
        let next = match (self, event) {
            (S::PreparingNormal, E::PreNormalHookCleared) => S::Normal,
            (S::Normal, E::UpdateRequested) => S::PreparingUpdate,
            (S::Normal, E::UpdateStarted) => S::Updating,
            (S::PreparingUpdate, E::PreUpdateHookCleared) => S::Updating,
            (S::PreparingUpdate, E::UpdateCancelled) => S::Normal,
            (S::Updating, E::UpdateCompleted) => S::Updated,
            (S::Updating, E::UpdateFinished) => S::Normal,
            (S::Updated, E::PostUpdateHookCleared) => S::Normal,
            (S::PreparingDelete, E::DeleteCancelled) => S::Normal,
            (S::PreparingDelete, E::DeleteRequested) => {
                return Err(LifecycleError::IllegalEvent { from: self, event });
            }
            (_, E::DeleteRequested) => S::PreparingDelete,
            _ => return Err(LifecycleError::IllegalEvent { from: self, event }),
        };
        Ok(next)
    }

    /// States reachable from `self` by one event.
    pub fn successors(self) -> Vec<LifecycleState> {
        let mut next: Vec<_> = LifecycleEvent::ALL.iter().filter_map(|e| self.on(*e).ok()).collect();
        next.sort();
        next.dedup();
        next
    }

    /// Whether an annotation change from `from` to `to` is legal (`None` is an
    /// absent annotation). Unchanged is legal; a pod may enter the machine only
    /// in an initial state and may never leave it.
    pub fn check_change(from: Option<Self>, to: Option<Self>) -> Result<(), LifecycleError> {
        let allowed = match from {
            None => vec![Self::PreparingNormal, Self::Normal],
            Some(f) => f.successors(),
        };
        match (from, to) {
            (a, b) if a == b => Ok(()),
            (_, Some(t)) if allowed.contains(&t) => Ok(()),
            _ => Err(LifecycleError::IllegalChange {
                from: from.map_or("(none)", Self::as_str).to_string(),
                to: to.map_or("(none)", Self::as_str).to_string(),
                allowed: allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

impl LifecycleEvent {
    pub const ALL: [LifecycleEvent; 10] = [
        Self::PreNormalHookCleared,
        Self::UpdateRequested,
        Self::PreUpdateHookCleared,
        Self::UpdateStarted,
        Self::UpdateCancelled,
        Self::UpdateCompleted,
        Self::UpdateFinished,
        Self::PostUpdateHookCleared,
        Self::DeleteRequested,
        Self::DeleteCancelled,
    ];
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LifecycleState {
    type Err = LifecycleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| LifecycleError::Unknown(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::{LifecycleEvent as E, LifecycleState as S, *};

    /// The whole table, written out once: every (state, event) pair.
    fn expected(state: S, event: E) -> Option<S> {
        match (state, event) {
            (S::PreparingNormal, E::PreNormalHookCleared) => Some(S::Normal),
            (S::PreparingNormal, E::DeleteRequested) => Some(S::PreparingDelete),
            (S::Normal, E::UpdateRequested) => Some(S::PreparingUpdate),
            (S::Normal, E::UpdateStarted) => Some(S::Updating),
            (S::Normal, E::DeleteRequested) => Some(S::PreparingDelete),
            (S::PreparingUpdate, E::PreUpdateHookCleared) => Some(S::Updating),
            (S::PreparingUpdate, E::UpdateCancelled) => Some(S::Normal),
            (S::PreparingUpdate, E::DeleteRequested) => Some(S::PreparingDelete),
            (S::Updating, E::UpdateCompleted) => Some(S::Updated),
            (S::Updating, E::UpdateFinished) => Some(S::Normal),
            (S::Updating, E::DeleteRequested) => Some(S::PreparingDelete),
            (S::Updated, E::PostUpdateHookCleared) => Some(S::Normal),
            (S::Updated, E::DeleteRequested) => Some(S::PreparingDelete),
            (S::PreparingDelete, E::DeleteCancelled) => Some(S::Normal),
            _ => None,
        }
    }

    #[test]
    fn every_state_event_pair_matches_the_table() {
        let mut legal = 0;
        for state in S::ALL {
            for event in E::ALL {
                match (state.on(event), expected(state, event)) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{state} on {event:?}");
                        legal += 1;
                    }
                    (Err(LifecycleError::IllegalEvent { from, event: e }), None) => {
                        assert_eq!((from, e), (state, event));
                    }
                    (got, want) => panic!("{state} on {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 14, "number of legal transitions");
    }

    #[test]
    fn a_full_update_with_hooks_returns_to_normal() {
        let mut s = S::initial(true);
        for e in [
            E::PreNormalHookCleared,
            E::UpdateRequested,
            E::PreUpdateHookCleared,
            E::UpdateCompleted,
            E::PostUpdateHookCleared,
        ] {
            s = s.on(e).unwrap();
        }
        assert_eq!(s, S::Normal);
        assert_eq!(S::initial(false), S::Normal);
    }

    #[test]
    fn an_update_without_hooks_skips_the_holding_states() {
        let s = S::Normal.on(E::UpdateStarted).unwrap();
        assert_eq!(s, S::Updating);
        assert_eq!(s.on(E::UpdateFinished), Ok(S::Normal));
        // A pod held before the update cannot skip its hook's release.
        assert!(S::PreparingUpdate.on(E::UpdateStarted).is_err());
        assert!(S::Updated.on(E::UpdateFinished).is_err());
    }

    #[test]
    fn annotation_changes_follow_the_table() {
        for from in S::ALL {
            for to in S::ALL {
                let by_event = E::ALL.iter().any(|e| from.on(*e) == Ok(to));
                let ok = S::check_change(Some(from), Some(to)).is_ok();
                assert_eq!(ok, from == to || by_event, "{from} -> {to}");
            }
            assert!(S::check_change(Some(from), None).is_err(), "{from} -> (none)");
        }
        assert!(S::check_change(None, Some(S::Normal)).is_ok());
        assert!(S::check_change(None, Some(S::PreparingNormal)).is_ok());
        assert!(S::check_change(None, Some(S::Updating)).is_err());
        assert!(S::check_change(None, None).is_ok());
    }

    #[test]
    fn illegal_change_message_says_what_is_allowed() {
        let err = S::check_change(Some(S::Normal), Some(S::Updated)).unwrap_err().to_string();
        assert_eq!(
            err,
            "lifecycle state cannot change from Normal to Updated; from Normal it may become: PreparingUpdate, Updating, PreparingDelete"
        );
    }

    #[test]
    fn parses_its_own_names_and_rejects_others() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
        }
        let err = "normal".parse::<S>().unwrap_err().to_string();
        assert!(err.contains("\"normal\"") && err.contains("PreparingNormal, Normal"), "{err}");
    }
}
