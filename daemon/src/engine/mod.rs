//! The poll engine: schedules every watch, runs polls through the agent
//! within the concurrency limits, applies the interval policy and hands every
//! outcome to the store's batch writer.

#[allow(dead_code)] // wired in with the engine loop
mod limits;
pub mod policy;
