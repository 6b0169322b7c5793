//! `rollout history` and `rollout undo`: the set's ControllerRevisions (as
//! the controller writes them: label `berth.dev/inplaceset`, owner the set,
//! `data.template`), and a JSON patch putting one's template back. Pure
//! parts first.

use berth_api::{InplaceSet, keys};
use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::PodTemplateSpec},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use serde::Serialize;

use crate::{
    cli::Output,
    error::{Error, Exit, Result},
    table,
};

/// One revision as history shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRow {
    pub revision: i64,
    pub name: String,
    /// `container=image`, in template order (init containers first).
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// The set rolls to it (`status.updateRevision`).
    pub update: bool,
    /// Pods below the partition stay at it (`status.currentRevision`).
    pub current: bool,
    #[serde(skip)]
    pub template: Option<PodTemplateSpec>,
}

/// The template stored in a revision.
pub fn template_of(rev: &ControllerRevision) -> Result<PodTemplateSpec, String> {
    let raw = rev.data.0.get("template").ok_or_else(|| format!("revision {} has no data.template", rev.name_any()))?;
    serde_json::from_value(raw.clone()).map_err(|e| format!("revision {}: data.template: {e}", rev.name_any()))
}

/// `container=image` of a template.
pub fn images(template: &PodTemplateSpec) -> Vec<String> {
    let spec = template.spec.clone().unwrap_or_default();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| format!("{}={}", c.name, c.image.clone().unwrap_or_default()))
        .collect()
}

/// The revisions of `set` (owned by it), oldest first.
pub fn rows(set: &InplaceSet, revisions: &[ControllerRevision]) -> Vec<RevisionRow> {
    let status = set.status.clone().unwrap_or_default();
    let mut rows: Vec<RevisionRow> = revisions
        .iter()
        .filter(|r| r.labels().get(keys::INPLACESET_NAME) == Some(&set.name_any()))
        .filter(|r| r.owner_references().iter().any(|o| Some(&o.uid) == set.uid().as_ref()))
        .map(|r| {
            let template = template_of(r).ok();
            RevisionRow {
                revision: r.revision.unwrap_or(0),
                name: r.name_any(),
                images: template.as_ref().map(images).unwrap_or_else(|| vec!["(unreadable template)".into()]),
                created: r.metadata.creation_timestamp.as_ref().map(|t| t.0),
                update: status.update_revision.as_deref() == Some(r.name_any().as_str()),
                current: status.current_revision.as_deref() == Some(r.name_any().as_str()),
                template,
            }
        })
        .collect();
    rows.sort_by_key(|r| (r.revision, r.name.clone()));
    rows
}

/// The revision undo goes to: `to` by number, else the newest one other than
/// the update revision (so undo twice goes back and forth, as kubectl's does).
pub fn undo_target(rows: &[RevisionRow], to: Option<i64>) -> Result<&RevisionRow, String> {
    let numbers = || rows.iter().map(|r| r.revision.to_string()).collect::<Vec<_>>().join(", ");
    match to {
        Some(n) => {
            let row = rows
                .iter()
                .find(|r| r.revision == n)
                .ok_or_else(|| format!("no revision {n}; revisions: {}", numbers()))?;
            if row.update {
                return Err(format!("revision {n} ({}) is already the set's template", row.name));
            }
            Ok(row)
        }
        None => rows
            .iter()
            .filter(|r| !r.update)
            .max_by_key(|r| r.revision)
            .ok_or_else(|| format!("no previous revision to go back to; revisions: {}", numbers())),
    }
}

/// The set with its template replaced by `template` as a whole (a merge
/// patch would keep fields the old template lacks); written back with
/// replace, so only if nobody changed the set since it was read.
pub fn undone(set: &InplaceSet, template: &PodTemplateSpec) -> InplaceSet {
    let mut set = set.clone();
    set.spec.template = template.clone();
    set.status = None;
    set.metadata.managed_fields = None;
    set
}

/// The history table.
pub fn render(rows: &[RevisionRow], now: Timestamp) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut marks = Vec::new();
            if r.update {
                marks.push("update");
            }
            if r.current {
                marks.push("current");
            }
            vec![
                r.revision.to_string(),
                r.name.clone(),
                r.images.join(","),
                r.created.map(|t| table::age(t, now)).unwrap_or_default(),
                marks.join(","),
            ]
        })
        .collect();
    table::table(&["REVISION", "NAME", "IMAGES", "AGE", "STATUS"], &cells)
}

async fn load(client: &Client, namespace: &str, name: &str) -> Result<(InplaceSet, Vec<RevisionRow>)> {
    let sets: Api<InplaceSet> = Api::namespaced(client.clone(), namespace);
    let set = sets.get(name).await.map_err(|e| Error::from_get(e, "InplaceSet", name, namespace))?;
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let list = revisions.list(&ListParams::default().labels(&format!("{}={name}", keys::INPLACESET_NAME))).await?;
    let rows = rows(&set, &list.items);
    Ok((set, rows))
}

pub async fn history(
    client: Client,
    namespace: &str,
    name: &str,
    revision: Option<i64>,
    output: Output,
) -> Result<Exit> {
    let (_, rows) = load(&client, namespace, name).await?;
    match revision {
        Some(n) => {
            let row = rows.iter().find(|r| r.revision == n).ok_or_else(|| {
                let all = rows.iter().map(|r| r.revision.to_string()).collect::<Vec<_>>().join(", ");
                Error::Invalid(format!("InplaceSet {name:?} has no revision {n}; revisions: {all}"))
            })?;
            let template =
                row.template.clone().ok_or_else(|| Error::Invalid(format!("revision {n}: unreadable template")))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&template)?),
                Output::Table => {
                    println!("InplaceSet {name:?} revision {n} ({})", row.name);
                    print!("{}", serde_yaml::to_string(&template).map_err(|e| Error::Invalid(e.to_string()))?);
                }
            }
        }
        None => match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Output::Table => print!("{}", render(&rows, Timestamp::now())),
        },
    }
    Ok(Exit::Success)
}

pub async fn undo(client: Client, namespace: &str, name: &str, to: Option<i64>) -> Result<Exit> {
    let (set, rows) = load(&client, namespace, name).await?;
    let target = undo_target(&rows, to).map_err(|e| Error::Invalid(format!("InplaceSet {name:?}: {e}")))?;
    let template = target
        .template
        .clone()
        .ok_or_else(|| Error::Invalid(format!("revision {}: unreadable template", target.revision)))?;
    let sets: Api<InplaceSet> = Api::namespaced(client, namespace);
    sets.replace(name, &PostParams::default(), &undone(&set, &template)).await?;
    println!(
        "InplaceSet {name:?} rolled back to revision {} ({}): {}",
        target.revision,
        target.name,
        target.images.join(",")
    );
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set() -> InplaceSet {
        serde_json::from_value(json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "web", "uid": "u1", "resourceVersion": "7"},
            "spec": {"selector": {}, "template": {}},
            "status": {"updateRevision": "web-c", "currentRevision": "web-b"}}))
        .unwrap()
    }

    fn rev(name: &str, number: i64, image: &str, owner: &str) -> ControllerRevision {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"berth.dev/inplaceset": "web"},
            "creationTimestamp": "2026-11-23T10:00:00Z",
            "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web", "uid": owner, "controller": true}]},
            "revision": number,
            "data": {"template": {"spec": {"containers": [{"name": "app", "image": image}, {"name": "log", "image": "log:1"}]}}}}))
        .unwrap()
    }

    fn all() -> Vec<ControllerRevision> {
        vec![
            rev("web-c", 3, "web:3", "u1"),
            rev("web-a", 1, "web:1", "u1"),
            rev("web-b", 2, "web:2", "u1"),
            rev("other", 4, "x", "u2"),
        ]
    }

    #[test]
    fn history_lists_the_sets_own_revisions_in_order_with_images_and_markers() {
        let rows = rows(&set(), &all());
        assert_eq!(
            rows.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [1, 2, 3],
            "another owner's revision is left out"
        );
        assert_eq!(rows[2].images, ["app=web:3", "log=log:1"]);
        let now = "2026-11-23T10:05:00Z".parse().unwrap();
        assert_eq!(
            render(&rows, now),
            "REVISION   NAME    IMAGES                AGE   STATUS\n\
             1          web-a   app=web:1,log=log:1   5m\n\
             2          web-b   app=web:2,log=log:1   5m    current\n\
             3          web-c   app=web:3,log=log:1   5m    update\n"
        );
    }

    #[test]
    fn undo_goes_to_the_newest_other_revision_or_the_one_named() {
        let rows = rows(&set(), &all());
        assert_eq!(undo_target(&rows, None).unwrap().name, "web-b");
        assert_eq!(undo_target(&rows, Some(1)).unwrap().name, "web-a");
        assert_eq!(undo_target(&rows, Some(3)).unwrap_err(), "revision 3 (web-c) is already the set's template");
        assert_eq!(undo_target(&rows, Some(9)).unwrap_err(), "no revision 9; revisions: 1, 2, 3");
        assert!(undo_target(&rows[2..], None).unwrap_err().starts_with("no previous revision"));
    }

    #[test]
    fn undo_replaces_the_whole_template_at_the_version_read() {
        let mut current = set();
        current.spec.template = serde_json::from_value(json!({"metadata": {"labels": {"extra": "x"}},
            "spec": {"containers": [{"name": "app", "image": "web:3"}]}}))
        .unwrap();
        let template = rows(&set(), &all())[0].template.clone().unwrap();
        let undone = undone(&current, &template);
        assert_eq!(undone.spec.template, template, "the extra label does not survive");
        assert_eq!(undone.metadata.resource_version.as_deref(), Some("7"), "replace is guarded by it");
        assert!(undone.status.is_none());
    }
}
