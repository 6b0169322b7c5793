//! In-place resize feasibility (DESIGN.md §5, the seed's "scheduler" step):
//! [`feasibility`] decides, purely, whether a node still has room for a
//! pod's new resources; [`controller`] feeds it Created requests one node at
//! a time and writes Accepted or Rejected.

pub mod controller;
pub mod feasibility;
