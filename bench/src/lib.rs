//! berth's benchmarks (measurements, never tests): a paced HTTPS load
//! generator, latency statistics, and the table + JSON every benchmark
//! reports. Each figure is reported beside a baseline measured in the same
//! run, so the ratio holds on any machine.

pub mod cpu;
pub mod load;
pub mod perf;
pub mod report;
pub mod stats;
