//! Pure statistics: online estimators and anytime-valid evidence. No IO, no clocks.

pub mod auc;
pub mod count_table;
pub mod divergence;
pub mod hdr;
pub mod mccrary;
pub mod moments;
pub mod msprt;
pub mod proportion;
pub mod sequential;
pub mod sketch;
