//! SidecarSet: what is injected into new pods, and how running pods move to a
//! changed sidecar. Injection and upgrade planning are pure functions; the
//! webhook (in `berth-webhooks`) and the controller carry them out.

pub mod controller;
pub mod inject;
pub mod plan;
pub mod revision;
pub mod status;
