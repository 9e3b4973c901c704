//! Shared by the data-plane tests and benchmarks.
pub mod frames;
pub mod model;
