//! berth node agent: the runtime core (issue 5, DESIGN.md §5).
//!
//! - [`agent`]: the next step for an Accepted resize on the node (pure)
//! - [`cgroup`]: requests/limits → CRI values and expected cgroup files (pure)
//! - [`cpuset`]: CPU lists in the kernel's format
//! - [`cpu_manager`]: exclusive CPU ownership, persisted atomically, reconciled after a restart
//! - [`order`]: pod-level vs container cgroup write order for a resize (pure)
//! - [`cgroupfs`]: finding and reading a container's cgroup files on the host
//! - [`cri`]: the CRI RuntimeService client and the verified update path
//! - [`process`]: the agent process's I/O: runtime connection, API writes, periodic reconcile
//! - [`readback`]: a container's cgroup files → its values (pure)
//! - [`runtime_plan`]: desired values, exclusive and shared CPUs, the memory check (pure)
//! - [`runtime_resize`]: one Accepted resize carried out through CRI, idempotently

pub mod agent;
pub mod cgroup;
pub mod cgroupfs;
pub mod cpu_manager;
pub mod cpuset;
pub mod cri;
pub mod order;
pub mod process;
pub mod readback;
pub mod runtime_plan;
pub mod runtime_resize;
