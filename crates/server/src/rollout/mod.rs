//! The pure rules of staged rollouts: the plan and its step (`plan`) and
//! maintenance windows (`window`). No I/O, no clock of their own, no
//! store: `now` and what the hosts report are passed in, so every rule is
//! tested here. Must not import anything of the crate; the driver that
//! stores and steps rollouts is a fleet use case (`crate::fleet::rollouts`).

pub mod plan;
pub mod window;

pub use plan::*;
