//! PersistentVolumeClaims from volumeClaimTemplates: created before their pod,
//! owned by the set per `whenDeleted`, deleted after scale-down per `whenScaled`.

use std::collections::BTreeMap;

use berth_api::inplaceset::{ClaimRetention, claim_name};

use super::{Action, Plan};
use crate::{Observed, PodView};

/// Claims pod `ordinal` needs that do not exist yet.
pub fn missing(o: &Observed, ordinal: i32) -> Vec<Action> {
    o.spec
        .volume_claim_templates
        .iter()
        .map(|t| (t, claim_name(t, &o.name, ordinal)))
        .filter(|(_, name)| !o.claims.iter().any(|c| c.name == *name))
        .map(|(t, name)| Action::CreateClaim { name, template: t.metadata.name.clone().unwrap_or_default(), ordinal })
        .collect()
}

/// Owner references per `whenDeleted`; claims of ordinals no longer kept
/// deleted per `whenScaled` once their pod is gone.
pub fn retention(o: &Observed, keep: &dyn Fn(i32) -> bool, by_ordinal: &BTreeMap<i32, &PodView>, out: &mut Plan) {
    let policy = o.spec.persistent_volume_claim_retention_policy.clone().unwrap_or_default();
    let owned = policy.when_deleted == ClaimRetention::Delete;
    for claim in o.claims.iter().filter(|c| !c.terminating) {
        if !keep(claim.ordinal) && policy.when_scaled == ClaimRetention::Delete {
            if !by_ordinal.contains_key(&claim.ordinal) {
                out.actions.push(Action::DeleteClaim { name: claim.name.clone() });
            }
            continue;
        }
        if claim.owned_by_set != owned {
            out.actions.push(Action::SetClaimOwner { name: claim.name.clone(), owned });
        }
    }
}
