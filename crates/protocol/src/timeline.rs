//! Timeline identifiers (`TimeLineID`).

use std::fmt;

/// A WAL timeline. Timeline 0 does not exist; a new cluster starts on 1.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl TimelineId {
    pub const FIRST: TimelineId = TimelineId(1);

    /// The `.history` file name of this timeline (`00000002.history`).
    pub fn history_file_name(self) -> String {
        format!("{:08X}.history", self.0)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_name() {
        assert_eq!(TimelineId(2).history_file_name(), "00000002.history");
        assert_eq!(TimelineId(0xAB).history_file_name(), "000000AB.history");
    }
}
