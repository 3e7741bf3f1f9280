//! The names of a dataset's splits.

use std::fmt;

/// One of a dataset's splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SplitName {
    /// The training split.
    Train,
    /// The validation split (GLUE's dev.tsv).
    Validation,
    /// The test split.
    Test,
    /// Training examples held out for model selection (`holdout:`), so that the validation split
    /// stays unseen and can be reported.
    Holdout,
}

impl SplitName {
    /// All splits, in order.
    pub const ALL: [SplitName; 4] = [
        SplitName::Train,
        SplitName::Validation,
        SplitName::Test,
        SplitName::Holdout,
    ];

    /// `train`, `validation` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Validation => "validation",
            SplitName::Test => "test",
            SplitName::Holdout => "holdout",
        }
    }

    /// Parses a split name (`validation` also as `val`, `valid` or `dev`).
    pub fn parse(s: &str) -> Option<SplitName> {
        match s {
            "train" => Some(SplitName::Train),
            "validation" | "val" | "valid" | "dev" => Some(SplitName::Validation),
            "test" => Some(SplitName::Test),
            _ => None,
        }
    }

    /// The split's position in [`SplitName::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SplitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
