//! Pure statistics: online estimators and anytime-valid evidence. No IO, no clocks.

pub mod divergence;
pub mod mccrary;
pub mod moments;
pub mod msprt;
pub mod sequential;
pub mod sketch;
