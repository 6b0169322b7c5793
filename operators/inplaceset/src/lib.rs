//! The InplaceSet controller. [`plan`] is a pure function from what was
//! observed (the set, its pods, its revisions) to the actions that move the
//! pods toward the spec; the executor (with the manager) only carries them out.

pub mod controller;
mod execute;
pub mod history;
pub mod observed;
pub mod plan;
pub mod pod;
pub mod status;

pub use observed::{Observed, PodView};
pub use plan::{Action, Blocked, Plan, plan};
