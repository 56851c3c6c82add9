//! How saga commands and replies look on the wire: header names, the reply's routing
//! key and step, and the reply's payload. The orchestrator writes commands this way
//! and reads replies this way; the participant helper does the opposite.

use serde::{Deserialize, Serialize};

/// Header naming the saga type a command belongs to.
pub const SAGA_TYPE_HEADER: &str = "x-saga-type";

/// Header with the attempt number of a command (compensations may be sent again).
pub const ATTEMPT_HEADER: &str = "x-saga-attempt";

/// Header with the routing key the participant replies to.
pub const REPLY_TO_HEADER: &str = "x-saga-reply-to";

/// Header on a compensation naming the action it undoes, so that the participant can
/// fence that action if it has not run yet.
pub const COMPENSATES_HEADER: &str = "x-saga-compensates";

/// The routing key replies to sagas of `saga_type` are published with.
pub fn reply_routing_key(saga_type: &str) -> String {
    format!("saga.{saga_type}.reply")
}

/// The step of the reply to attempt `attempt` of `command`. Distinct per attempt, so
/// the orchestrator's inbox takes each attempt's reply once, and a resent command's
/// reply is not mistaken for a duplicate of the first.
pub fn reply_step(command: &str, attempt: u32) -> String {
    format!("{command}.reply.{attempt}")
}

/// The command and attempt a reply step answers.
pub fn parse_reply_step(step: &str) -> Option<(&str, u32)> {
    let (rest, attempt) = step.rsplit_once('.')?;
    let command = rest.strip_suffix(".reply")?;
    Some((command, attempt.parse().ok()?))
}

/// A participant's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// True when the command took effect (or a compensation found nothing to undo).
    pub succeeded: bool,
    /// What the action produced, merged into the saga's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_step_names_its_command_and_attempt() {
        let step = reply_step("inventory.release", 3);
        assert_eq!(step, "inventory.release.reply.3");
        assert_eq!(parse_reply_step(&step), Some(("inventory.release", 3)));
        assert_eq!(parse_reply_step("inventory.release"), None);
        assert_eq!(parse_reply_step("inventory.release.reply.x"), None);
    }
}
