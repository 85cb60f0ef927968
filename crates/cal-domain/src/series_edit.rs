//! What an edit does to a series. Given what the edited id denotes (a row, an override reached
//! through its occurrence id, a generated occurrence), the scope asked for and whether the rule
//! changes, [`plan`] answers which write carries the edit out — patch the row, override one
//! occurrence, patch the series, split it — or why it is bad input.
//!
//! Only the decision lives here: the API loads the rows, builds and checks the patch and does the
//! write the plan names.

/// What the edited id denotes, reduced to the facts the decision looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditTarget {
    /// A stored row addressed by its own id: a single event (neither flag), a series master
    /// (`has_rule`: it has an rrule) or an override (`in_series`: it has a `recurring_event_id`).
    /// The database allows no row with both; the plan for one is still defined.
    Row { has_rule: bool, in_series: bool },
    /// An overridden occurrence addressed by its occurrence id: the override row. `has_rule`:
    /// the row has an rrule (an override row has none, the database sees to it).
    Override { has_rule: bool },
    /// An occurrence the rule generates, not stored. `first`: its original start is the series'
    /// start.
    Generated { first: bool },
}

/// How much of a series the edit asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No scope given: the target's default (this occurrence for an occurrence id, the whole
    /// series for a series id).
    Unspecified,
    /// Only this occurrence.
    This,
    /// This occurrence and all later ones.
    ThisAndFollowing,
    /// The whole series.
    All,
}

/// One edit as [`plan`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesEdit {
    pub target: EditTarget,
    pub scope: Scope,
    /// The edit sets or clears the rule (the input's `rrule` is given, `null` included).
    pub rule_change: bool,
}

/// The write that carries an edit out, named after what the API then does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditPlan {
    /// Patch the addressed row itself (a single event or an override), as a single event.
    UpdateRow,
    /// Store the generated occurrence as an override row of its series, with the patch applied.
    OverrideOccurrence,
    /// Patch the row addressed by its own id as a series master: the times as the patch gives
    /// them, the rule as the patch sets it.
    UpdateSeries,
    /// Patch the series of the addressed generated occurrence: every occurrence moves by what
    /// this one moves by.
    UpdateSeriesFromOccurrence,
    /// Patch the series of the addressed override row (loaded through its `recurring_event_id`):
    /// every occurrence moves by what the override moves by.
    UpdateSeriesFromOverride,
    /// Split the series at the addressed generated occurrence: the series ends before it and a
    /// new one starts there, with the patch applied.
    SplitSeries,
    /// Split the series of the addressed override row (loaded through its `recurring_event_id`)
    /// at the override's original start.
    SplitSeriesAtOverride,
    /// Bad input: the message the client sees.
    Reject(&'static str),
}

const RULE_ON_WHOLE_SERIES: &str = "rrule can only change on a whole series";
const THIS_NEEDS_OCCURRENCE: &str = "scope THIS needs an occurrence id (seriesId_originalStart)";
const FOLLOWING_NEEDS_OCCURRENCE: &str = "scope THIS_AND_FOLLOWING needs an occurrence id";

/// What `edit` does to its event or series. The first arm that matches wins.
pub fn plan(edit: SeriesEdit) -> EditPlan {
    let SeriesEdit {
        target,
        scope,
        rule_change,
    } = edit;
    match (target, scope) {
        // A single event or an override row: change the row.
        (
            EditTarget::Row {
                has_rule: false, ..
            }
            | EditTarget::Override { has_rule: false },
            Scope::Unspecified | Scope::This,
        ) => {
            if rule_change {
                EditPlan::Reject(RULE_ON_WHOLE_SERIES)
            } else {
                EditPlan::UpdateRow
            }
        }
        (EditTarget::Row { .. }, Scope::This) => EditPlan::Reject(THIS_NEEDS_OCCURRENCE),
        (
            EditTarget::Row {
                in_series: false, ..
            },
            Scope::ThisAndFollowing,
        ) => EditPlan::Reject(FOLLOWING_NEEDS_OCCURRENCE),
        // The whole series, addressed by its id.
        (EditTarget::Row { .. }, Scope::Unspecified | Scope::All) => EditPlan::UpdateSeries,
        // One generated occurrence: it becomes an override.
        (EditTarget::Generated { .. }, Scope::Unspecified | Scope::This) => {
            if rule_change {
                EditPlan::Reject(RULE_ON_WHOLE_SERIES)
            } else {
                EditPlan::OverrideOccurrence
            }
        }
        // The whole series, addressed through one occurrence: times move by the same amount.
        (EditTarget::Generated { .. }, Scope::All) => EditPlan::UpdateSeriesFromOccurrence,
        // An override row (by occurrence id, or by its own row id for THIS_AND_FOLLOWING): the
        // edit reaches its series.
        (EditTarget::Override { .. }, Scope::All) => EditPlan::UpdateSeriesFromOverride,
        (EditTarget::Override { .. } | EditTarget::Row { .. }, Scope::ThisAndFollowing) => {
            EditPlan::SplitSeriesAtOverride
        }
        // From the first occurrence on is the whole series.
        (EditTarget::Generated { first: true }, Scope::ThisAndFollowing) => {
            EditPlan::UpdateSeriesFromOccurrence
        }
        (EditTarget::Generated { first: false }, Scope::ThisAndFollowing) => EditPlan::SplitSeries,
        // What is left: an override row with a rule of its own, THIS or no scope.
        (EditTarget::Override { .. }, Scope::Unspecified | Scope::This) => EditPlan::UpdateRow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINGLE: EditTarget = EditTarget::Row {
        has_rule: false,
        in_series: false,
    };
    const MASTER: EditTarget = EditTarget::Row {
        has_rule: true,
        in_series: false,
    };
    /// An override row addressed by its own id.
    const OVERRIDE_ROW: EditTarget = EditTarget::Row {
        has_rule: false,
        in_series: true,
    };
    /// A row the database does not allow (a rule and a series of its own).
    const BOTH: EditTarget = EditTarget::Row {
        has_rule: true,
        in_series: true,
    };
    const OVERRIDE: EditTarget = EditTarget::Override { has_rule: false };
    const OVERRIDE_WITH_RULE: EditTarget = EditTarget::Override { has_rule: true };
    const FIRST: EditTarget = EditTarget::Generated { first: true };
    const LATER: EditTarget = EditTarget::Generated { first: false };

    const TARGETS: [EditTarget; 8] = [
        SINGLE,
        MASTER,
        OVERRIDE_ROW,
        BOTH,
        OVERRIDE,
        OVERRIDE_WITH_RULE,
        FIRST,
        LATER,
    ];
    const SCOPES: [Scope; 4] = [
        Scope::Unspecified,
        Scope::This,
        Scope::ThisAndFollowing,
        Scope::All,
    ];

    fn of(target: EditTarget, scope: Scope, rule_change: bool) -> EditPlan {
        plan(SeriesEdit {
            target,
            scope,
            rule_change,
        })
    }

    /// The plan for both values of `rule_change`, asserting they agree.
    fn either(target: EditTarget, scope: Scope) -> EditPlan {
        let p = of(target, scope, false);
        assert_eq!(of(target, scope, true), p, "{target:?} {scope:?}");
        p
    }

    #[test]
    fn a_row_without_a_rule_is_patched_in_place() {
        for target in [SINGLE, OVERRIDE_ROW, OVERRIDE] {
            for scope in [Scope::Unspecified, Scope::This] {
                assert_eq!(
                    of(target, scope, false),
                    EditPlan::UpdateRow,
                    "{target:?} {scope:?}"
                );
            }
        }
    }

    #[test]
    fn a_row_without_a_rule_cannot_change_the_rule() {
        for target in [SINGLE, OVERRIDE_ROW, OVERRIDE] {
            for scope in [Scope::Unspecified, Scope::This] {
                assert_eq!(
                    of(target, scope, true),
                    EditPlan::Reject("rrule can only change on a whole series"),
                    "{target:?} {scope:?}"
                );
            }
        }
    }

    #[test]
    fn this_on_a_series_id_needs_an_occurrence_id() {
        for target in [MASTER, BOTH] {
            assert_eq!(
                either(target, Scope::This),
                EditPlan::Reject("scope THIS needs an occurrence id (seriesId_originalStart)"),
            );
        }
    }

    #[test]
    fn this_and_following_on_a_row_outside_a_series_needs_an_occurrence_id() {
        for target in [SINGLE, MASTER] {
            assert_eq!(
                either(target, Scope::ThisAndFollowing),
                EditPlan::Reject("scope THIS_AND_FOLLOWING needs an occurrence id"),
            );
        }
    }

    #[test]
    fn a_row_id_with_all_or_a_series_id_without_scope_patches_the_series() {
        assert_eq!(either(MASTER, Scope::Unspecified), EditPlan::UpdateSeries);
        assert_eq!(either(BOTH, Scope::Unspecified), EditPlan::UpdateSeries);
        // ALL on any row addressed by its own id: a single event may become a series.
        for target in [SINGLE, MASTER, OVERRIDE_ROW, BOTH] {
            assert_eq!(
                either(target, Scope::All),
                EditPlan::UpdateSeries,
                "{target:?}"
            );
        }
    }

    #[test]
    fn a_generated_occurrence_becomes_an_override() {
        for target in [FIRST, LATER] {
            for scope in [Scope::Unspecified, Scope::This] {
                assert_eq!(
                    of(target, scope, false),
                    EditPlan::OverrideOccurrence,
                    "{target:?} {scope:?}"
                );
            }
        }
    }

    #[test]
    fn a_generated_occurrence_cannot_change_the_rule() {
        for target in [FIRST, LATER] {
            for scope in [Scope::Unspecified, Scope::This] {
                assert_eq!(
                    of(target, scope, true),
                    EditPlan::Reject("rrule can only change on a whole series"),
                    "{target:?} {scope:?}"
                );
            }
        }
    }

    #[test]
    fn all_through_a_generated_occurrence_patches_the_series() {
        for target in [FIRST, LATER] {
            assert_eq!(
                either(target, Scope::All),
                EditPlan::UpdateSeriesFromOccurrence
            );
        }
    }

    #[test]
    fn all_through_an_override_patches_its_series() {
        for target in [OVERRIDE, OVERRIDE_WITH_RULE] {
            assert_eq!(
                either(target, Scope::All),
                EditPlan::UpdateSeriesFromOverride
            );
        }
    }

    #[test]
    fn this_and_following_from_an_override_splits_its_series() {
        // By occurrence id, or by the override's own row id.
        for target in [OVERRIDE, OVERRIDE_WITH_RULE, OVERRIDE_ROW, BOTH] {
            assert_eq!(
                either(target, Scope::ThisAndFollowing),
                EditPlan::SplitSeriesAtOverride,
                "{target:?}"
            );
        }
    }

    #[test]
    fn this_and_following_from_the_first_occurrence_patches_the_series() {
        assert_eq!(
            either(FIRST, Scope::ThisAndFollowing),
            EditPlan::UpdateSeriesFromOccurrence
        );
    }

    #[test]
    fn this_and_following_from_a_later_occurrence_splits_the_series() {
        assert_eq!(
            either(LATER, Scope::ThisAndFollowing),
            EditPlan::SplitSeries
        );
    }

    #[test]
    fn an_override_with_a_rule_of_its_own_is_patched_in_place() {
        for scope in [Scope::Unspecified, Scope::This] {
            assert_eq!(either(OVERRIDE_WITH_RULE, scope), EditPlan::UpdateRow);
        }
    }

    /// Setting or clearing the rule only ever turns an in-place patch or an override into the
    /// one rejection; every other plan ignores it.
    #[test]
    fn a_rule_change_matters_only_where_a_single_row_would_be_written() {
        for target in TARGETS {
            for scope in SCOPES {
                let (without, with) = (of(target, scope, false), of(target, scope, true));
                if without != with {
                    assert!(
                        matches!(without, EditPlan::UpdateRow | EditPlan::OverrideOccurrence),
                        "{target:?} {scope:?}: {without:?}"
                    );
                    assert_eq!(
                        with,
                        EditPlan::Reject("rrule can only change on a whole series")
                    );
                }
            }
        }
    }
}
