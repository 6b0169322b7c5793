//! `rollout status|pause|resume|approve|history|undo` for InplaceSets.

pub mod control;
pub mod history;
pub mod status;
