//! The checks. An alert needs both evidence (log e-value >= ln(1/alpha')) and magnitude (>= a
//! configured minimum), fires once per (check, experiment, subject) and stays active.
//!
//! Each check lives in one module that owns its detector state (what fired, its running
//! evidence: part of the snapshot and merged across partitions), its evaluation after an event,
//! its report section and its metrics, behind one shape, [`Module`]; the statistics it reads
//! (arm counts, strata, the unit filter, the arm model...) are its subject's, in
//! [`crate::state`] and [`crate::stats`], updated once per event for every check.
//!
//! A check has a subject: an experiment, a router, a judge or an eval set. The engine keeps
//! each subject [`Tracked`] with the states of its checks and calls them all after each event
//! of that subject, in registration order (`registry!` below). Adding a check is its own
//! module and one registration line: the line names the [`Check`] variant, its report field
//! and the module's type.

pub mod alert;

pub use alert::Alert;

use crate::metrics::Labels;
use crate::state::experiment::{Experiment, Observed};
use crate::state::judge::JudgeState;
use crate::state::router::{Decision, RouterState};
use crate::state::sampling::{EvalSet, Production};
use prometheus::Registry;
use serde::ser::SerializeMap;
use serde::Serialize;

/// What a detector needs to know about the moment it runs.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalContext {
    /// 0-based position of the current message in the stream.
    pub seq: u64,
    /// Event time of the current message (epoch ms).
    pub ts_ms: i64,
    /// The anytime-valid level of one check.
    pub alpha: f64,
    /// `ln(1 / alpha)`.
    pub log_threshold: f64,
    /// The minimum arm-share deviation for an alert.
    pub min_share_deviation: f64,
    /// Share of units in more than one arm that alerts.
    pub exposure_rate: f64,
    /// Minimum AUC above 0.5 for `arm_predictable`.
    pub min_auc_margin: f64,
    /// One-sided standard normal quantile at `alpha` (for fixed-sample bounds).
    pub z_alpha: f64,
}

impl EvalContext {
    /// The levels of `settings`, at stream position 0.
    pub fn levels(settings: &crate::config::AlertSettings) -> EvalContext {
        EvalContext {
            seq: 0,
            ts_ms: 0,
            alpha: settings.alpha,
            log_threshold: (1.0 / settings.alpha).ln(),
            min_share_deviation: settings.min_share_deviation,
            exposure_rate: settings.multiple_exposure_rate,
            min_auc_margin: settings.min_auc_margin,
            z_alpha: crate::stats::proportion::z_two_sided(2.0 * settings.alpha),
        }
    }

    /// These levels shared by `n` tests (Bonferroni: each at `alpha / n`): the phases of a
    /// phased experiment, so the experiment as a whole keeps `alpha`.
    pub fn shared_by(&self, n: u32) -> EvalContext {
        let alpha = self.alpha / f64::from(n.max(1));
        EvalContext {
            alpha,
            log_threshold: (1.0 / alpha).ln(),
            z_alpha: crate::stats::proportion::z_two_sided(2.0 * alpha),
            ..*self
        }
    }
}

/// What a check's subject hands its checks.
pub trait Subject {
    /// What one event did to the subject (what each check looks at to decide whether to run).
    type Update<'a>;
    /// What a report section needs beside the subject and the check's state.
    type Env<'a>: Copy;
}

/// An event of an experiment: the event itself (for the checks that update statistics of
/// their own from it) and what it did to the experiment's shared statistics.
#[derive(Clone, Copy, Debug)]
pub struct Exposure<'a> {
    /// The event (a prompt, or a judgment carrying an input of the experiment).
    pub ev: &'a crate::event::Event<'a>,
    /// What it touched.
    pub obs: Observed,
}

impl Subject for Experiment {
    type Update<'a> = Exposure<'a>;
    type Env<'a> = &'a EvalContext;
}

impl Subject for crate::state::overlap::PairState {
    type Update<'a> = ();
    type Env<'a> = &'a EvalContext;
}

impl Subject for RouterState {
    type Update<'a> = Decision;
    type Env<'a> = &'a EvalContext;
}

/// What a judgment did to its judge.
#[derive(Clone, Copy, Debug)]
pub struct JudgeUpdate {
    /// The index of a version first seen with this judgment (not the judge's first).
    pub new_version: Option<usize>,
    /// A control-set judgment.
    pub control: bool,
}

impl Subject for JudgeState {
    type Update<'a> = JudgeUpdate;
    type Env<'a> = &'a EvalContext;
}

/// What an eval set's checks compare it with.
#[derive(Clone, Copy)]
pub struct SamplingEnv<'a> {
    /// Production traffic.
    pub production: &'a Production,
    /// Alert levels.
    pub levels: &'a EvalContext,
}

impl Subject for EvalSet {
    type Update<'a> = &'a Production;
    type Env<'a> = SamplingEnv<'a>;
}

/// One check over subjects `S`.
pub trait Module<S: Subject> {
    /// Its detector state per subject: serialized in snapshots, merged across partitions.
    type State: Clone + std::fmt::Debug + Default + Serialize + serde::de::DeserializeOwned;
    /// Its report section.
    type Section: Serialize;
    /// Its metrics.
    type Metrics;

    /// After an event of the subject: evaluate when the event concerns the check.
    fn on_event(
        st: &mut Self::State,
        s: &mut S,
        update: &S::Update<'_>,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    );

    /// Merge the state of the same subject in another partition (`os`: that subject, whose
    /// statistics were already merged into `s`).
    fn merge(st: &mut Self::State, s: &S, other: &Self::State, os: &S);

    /// The subject's statistics restarted (an undeclared experiment gained an arm).
    fn restart(_st: &mut Self::State) {}

    /// Its report section.
    fn section(st: &Self::State, s: &S, env: S::Env<'_>) -> Self::Section;

    /// Whether the section is left out of the report (nothing to show).
    fn absent(_section: &Self::Section) -> bool {
        false
    }

    /// Pseudonymize the values of events its section quotes (unit ids, cluster names, input
    /// values), as served unless `http.report_values` ([`crate::report::pseudonym`]).
    fn redact(_section: &mut Self::Section) {}

    /// Register its metrics.
    fn metrics(r: &Registry) -> Self::Metrics;

    /// Copy its section into its metrics; `subject` is the subject's label value (already
    /// admitted under its cap), `arms` its arms (experiments).
    fn publish(
        m: &mut Self::Metrics,
        labels: &mut Labels,
        subject: &str,
        arms: &[String],
        section: &Self::Section,
    );
}

/// A subject with the states of its checks. It reads as the subject (`Deref`): the checks'
/// states are the engine's business.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Tracked<S, C> {
    /// The subject's statistics.
    pub stats: S,
    /// Its checks' states.
    pub checks: C,
}

impl<S, C: Default> Tracked<S, C> {
    /// A subject with its checks not yet run.
    pub fn new(stats: S) -> Tracked<S, C> {
        Tracked {
            stats,
            checks: C::default(),
        }
    }
}

impl<S, C> std::ops::Deref for Tracked<S, C> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.stats
    }
}

impl<S, C> std::ops::DerefMut for Tracked<S, C> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.stats
    }
}

/// Declares the checks per subject: their modules, the [`Check`] enum, and per subject the struct of its
/// checks' states (`on_event`, `merge`, `restart`), of their report sections (serialized as
/// one map entry per section, flattened into the subject's report) and of their metrics.
macro_rules! registry {
    ($(
        $(#[$sdoc:meta])*
        $subject:ty => $checks:ident, $sections:ident, $metrics:ident {
            $( $field:ident : $variant:ident = $name:literal => $module:ident :: $ty:ident, )*
        }
    )*) => {
        $($(pub mod $module;)*)*

        /// Check names used across the project.
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize,
            serde::Deserialize,
        )]
        pub enum Check {
            $($(
                #[doc = $name]
                #[serde(rename = $name)]
                $variant,
            )*)*
        }

        impl Check {
            /// Every check, in registration order.
            pub const ALL: &'static [Check] = &[$($(Check::$variant,)*)*];

            /// The check's name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($(Check::$variant => $name,)*)*
                }
            }
        }

        $(
            $(#[$sdoc])*
            #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
            pub struct $checks {
                $(
                    #[doc = $name]
                    pub $field: <$module::$ty as Module<$subject>>::State,
                )*
            }

            impl $checks {
                /// Run every check after an event of `s`.
                #[inline]
                pub fn on_event(
                    &mut self,
                    s: &mut $subject,
                    update: &<$subject as Subject>::Update<'_>,
                    ctx: &EvalContext,
                    out: &mut Vec<Alert>,
                ) {
                    $(<$module::$ty as Module<$subject>>::on_event(
                        &mut self.$field, s, update, ctx, out,
                    );)*
                }

                /// Merge the checks of the same subject in another partition.
                pub fn merge(&mut self, s: &$subject, other: &Self, os: &$subject) {
                    $(<$module::$ty as Module<$subject>>::merge(
                        &mut self.$field, s, &other.$field, os,
                    );)*
                }

                /// The subject's statistics restarted.
                pub fn restart(&mut self) {
                    $(<$module::$ty as Module<$subject>>::restart(&mut self.$field);)*
                }

                /// Every check's report section.
                pub fn sections(
                    &self,
                    s: &$subject,
                    env: <$subject as Subject>::Env<'_>,
                ) -> $sections {
                    $sections {
                        $($field: <$module::$ty as Module<$subject>>::section(
                            &self.$field, s, env,
                        ),)*
                    }
                }
            }

            /// The report sections of the checks.
            #[derive(Debug)]
            pub struct $sections {
                $(
                    #[doc = $name]
                    pub $field: <$module::$ty as Module<$subject>>::Section,
                )*
            }

            impl $sections {
                /// Pseudonymize the values of events every section quotes ([`Module::redact`]).
                pub fn redact(&mut self) {
                    $(<$module::$ty as Module<$subject>>::redact(&mut self.$field);)*
                }
            }

            impl Clone for $sections
            where
                $(<$module::$ty as Module<$subject>>::Section: Clone,)*
            {
                fn clone(&self) -> Self {
                    $sections { $($field: self.$field.clone(),)* }
                }
            }

            impl Serialize for $sections {
                fn serialize<Z: serde::Serializer>(&self, ser: Z) -> Result<Z::Ok, Z::Error> {
                    let mut map = ser.serialize_map(None)?;
                    $(
                        if !<$module::$ty as Module<$subject>>::absent(&self.$field) {
                            map.serialize_entry(stringify!($field), &self.$field)?;
                        }
                    )*
                    map.end()
                }
            }

            /// The metrics of the checks.
            pub struct $metrics {
                $($field: <$module::$ty as Module<$subject>>::Metrics,)*
            }

            impl $metrics {
                /// Register them.
                pub fn new(r: &Registry) -> $metrics {
                    $metrics {
                        $($field: <$module::$ty as Module<$subject>>::metrics(r),)*
                    }
                }

                /// Copy the sections of one subject into them.
                pub fn publish(
                    &mut self,
                    labels: &mut Labels,
                    subject: &str,
                    arms: &[String],
                    sections: &$sections,
                ) {
                    $(<$module::$ty as Module<$subject>>::publish(
                        &mut self.$field, labels, subject, arms, &sections.$field,
                    );)*
                }
            }
        )*
    };
}

registry! {
    /// The checks of an experiment. Their order is the order in which they evaluate after an
    /// event (and so the order of alerts fired by one event).
    Experiment => ExperimentChecks, ExperimentSections, ExperimentMetrics {
        substrates: SubstrateChange = "substrate_change" => substrate_change::SubstrateChange,
        multiple_exposure: MultipleExposure = "multiple_exposure" => multiple_exposure::MultipleExposure,
        clusters: ClusterMixed = "cluster_mixed" => cluster_mixed::ClusterMixed,
        assignment: AssignmentMismatch = "assignment_mismatch" => assignment_mismatch::AssignmentMismatch,
        srm: Srm = "srm" => srm::Srm,
        predictability: ArmPredictable = "arm_predictable" => arm_predictable::ArmPredictable,
        inputs: InputDivergence = "input_divergence" => input_divergence::InputDivergence,
    }
    /// The checks of a router.
    RouterState => RouterChecks, RouterSections, RouterMetrics {
        compliance: ThresholdCompliance = "threshold_compliance" => threshold_compliance::ThresholdCompliance,
        density: ThresholdDensity = "threshold_density" => threshold_density::ThresholdDensity,
    }
    /// The checks of a judge endpoint.
    JudgeState => JudgeChecks, JudgeSections, JudgeMetrics {
        versions: JudgeVersionChange = "judge_version_change" => judge_version_change::JudgeVersionChange,
        score_shift: JudgeScoreShift = "judge_score_shift" => judge_score_shift::JudgeScoreShift,
    }
    /// The checks of an eval set.
    EvalSet => EvalSetChecks, EvalSetSections, EvalSetMetrics {
        skew: SamplingSkew = "sampling_skew" => sampling_skew::SamplingSkew,
    }
    /// The checks of two experiments that share units.
    crate::state::overlap::PairState => PairChecks, PairSections, PairMetrics {
        dependence: OverlapDependence = "overlap_dependence" => overlap_dependence::OverlapDependence,
    }
}

/// An experiment with its checks.
pub type TrackedExperiment = Tracked<Experiment, ExperimentChecks>;
/// A router with its checks.
pub type TrackedRouter = Tracked<RouterState, RouterChecks>;
/// A judge with its checks.
pub type TrackedJudge = Tracked<JudgeState, JudgeChecks>;
/// An eval set with its checks.
pub type TrackedEvalSet = Tracked<EvalSet, EvalSetChecks>;
/// A pair of overlapping experiments with its checks.
pub type TrackedPair = Tracked<crate::state::overlap::PairState, PairChecks>;

impl TrackedExperiment {
    /// Merge the same experiment from another partition: its statistics, then its checks
    /// (nothing when the designs differ: undeclared arms seen in another order).
    pub fn merge(&mut self, other: &TrackedExperiment) {
        if self.stats.arms != other.stats.arms {
            return;
        }
        self.stats.merge(&other.stats);
        self.checks.merge(&self.stats, &other.checks, &other.stats);
    }

    /// Run the checks after `ev` did `obs` to the experiment (restarting them first when its
    /// statistics restarted).
    #[inline]
    pub fn checks_after(
        &mut self,
        ev: &crate::event::Event<'_>,
        obs: Observed,
        ctx: &EvalContext,
        out: &mut Vec<Alert>,
    ) {
        if obs.restarted {
            self.checks.restart();
        }
        self.checks
            .on_event(&mut self.stats, &Exposure { ev, obs }, ctx, out);
    }
}

/// Arm shares of a count vector.
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| crate::stats::proportion::share(c, n))
        .collect()
}

/// `"control 40.3% (design 50.0%), treatment 59.7% (design 50.0%)"`: observed arm shares with the
/// shares they are compared against, for alert messages.
pub fn describe_shares(
    arms: &[&str],
    observed: &[f64],
    against: &[f64],
    against_name: &str,
) -> String {
    arms.iter()
        .zip(observed.iter().zip(against))
        .map(|(a, (o, w))| format!("{a} {:.1}% ({against_name} {:.1}%)", 100.0 * o, 100.0 * w))
        .collect::<Vec<_>>()
        .join(", ")
}
