//! What the rules know of a definition: each step's shape (an action that may be
//! undone, or a wait for an event), the parallel group it runs in, and its timeout.

use std::time::Duration;

/// Longest a parallel group may be: which of its steps have answered is kept as the
/// bits of one 64-bit column.
pub const MAX_GROUP: usize = 64;

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Sends an action to a participant and waits for its reply.
    Action {
        /// Whether a compensation undoes it.
        compensable: bool,
    },
    /// Sends nothing, and waits for an event delivered to the saga (a signal).
    Wait,
}

/// The steps that run side by side: `first` and the `len - 1` steps after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// Its first step.
    pub first: usize,
    /// How many steps it has (2 to [`MAX_GROUP`]).
    pub len: usize,
}

impl Group {
    /// Whether `step` is one of the group's.
    pub fn contains(self, step: usize) -> bool {
        (self.first..self.first + self.len).contains(&step)
    }

    /// Its last step.
    pub fn last(self) -> usize {
        self.first + self.len - 1
    }

    /// The bit of `step` in a set of the group's steps.
    pub fn bit(self, step: usize) -> u64 {
        1 << (step - self.first)
    }

    /// Every step of the group, as a set.
    pub fn all(self) -> u64 {
        if self.len >= 64 {
            u64::MAX
        } else {
            (1 << self.len) - 1
        }
    }
}

/// One step as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// An action or a wait.
    pub work: Work,
    /// The parallel group the step runs in, if any.
    pub group: Option<Group>,
    /// How long its action (a first compensation or cancel too) or its wait may last.
    pub timeout: Duration,
}

impl Shape {
    /// An action that runs alone.
    pub const fn action(compensable: bool, timeout: Duration) -> Self {
        Self {
            work: Work::Action { compensable },
            group: None,
            timeout,
        }
    }

    /// A wait for an event.
    pub const fn wait(timeout: Duration) -> Self {
        Self {
            work: Work::Wait,
            group: None,
            timeout,
        }
    }
}

/// What the rules need to know of a saga's definition.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// Every step, in order.
    pub steps: &'a [Shape],
    /// Tries of one compensation (replies of failure and timeouts), or of one cancel,
    /// before the saga is `failed`.
    pub compensation_attempts: u32,
}

/// The steps that run together: one step, or a parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Single(usize),
    Wait(usize),
    Group(Group),
}

impl Plan<'_> {
    /// Whether a compensation undoes `step`.
    pub fn compensable(&self, step: usize) -> bool {
        matches!(
            self.steps.get(step).map(|s| s.work),
            Some(Work::Action { compensable: true })
        )
    }

    /// The timeout of `step`.
    pub fn timeout(&self, step: usize) -> Duration {
        self.steps
            .get(step)
            .map_or(Duration::ZERO, |shape| shape.timeout)
    }

    /// The group `step` runs in, if any.
    pub fn group(&self, step: usize) -> Option<Group> {
        self.steps.get(step).and_then(|shape| shape.group)
    }

    /// The stage that begins at `step`, if a step is there.
    pub(crate) fn stage(&self, step: usize) -> Option<Stage> {
        let shape = self.steps.get(step)?;
        Some(match (shape.group, shape.work) {
            (Some(group), _) => Stage::Group(group),
            (None, Work::Wait) => Stage::Wait(step),
            (None, Work::Action { .. }) => Stage::Single(step),
        })
    }

    /// The shortest timeout among the steps of `group` not in `answered`.
    pub(crate) fn shortest_wait(&self, group: Group, answered: u64) -> Duration {
        (group.first..=group.last())
            .filter(|step| answered & group.bit(*step) == 0)
            .map(|step| self.timeout(step))
            .min()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_of_sixty_four_has_every_bit() {
        let group = Group { first: 3, len: 64 };
        assert_eq!(group.all(), u64::MAX);
        assert_eq!(group.bit(66), 1 << 63);
        assert!(group.contains(66) && !group.contains(67) && !group.contains(2));
        assert_eq!(Group { first: 0, len: 3 }.all(), 0b111);
    }
}
