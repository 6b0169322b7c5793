//! The one in-place update library of berth (as OpenKruise's
//! `pkg/util/inplaceupdate`): InplaceSet and SidecarSet both use it.
//!
//! - [`diff`]: what a template change means for a running pod: nothing, an
//!   in-place update (images, labels, annotations), or a recreate, and why.
//! - [`patch`]: the pod patches that carry an in-place update out.
//! - [`progress`]: whether a pod's in-place update has completed.
//! - [`revision`]: the stable hash naming a template revision.
//! - [`scaled`]: counts given as a number or a percent.
//! - [`runs`]: which planned actions may execute concurrently.
//! - [`apply`]: the API calls that send the patches; [`pods`]: the one shared
//!   pod watch (the only I/O here).
//!
//! Everything else is pure: objects in, decisions and patches out.

pub mod apply;
pub mod conditions;
pub mod controllers;
pub mod diff;
pub mod patch;
pub mod pods;
pub mod progress;
pub mod revision;
pub mod runs;
pub mod scaled;

pub use diff::{InPlaceChanges, UpdatePlan, plan_update};
