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

/// Header with a command's deadline, in milliseconds since the Unix epoch: the
/// moment the orchestrator stops waiting for its reply. An action that arrives later
/// is not run (the participant helper answers it as fenced), since the orchestrator
/// is by then compensating or cancelling it. Clocks may differ between hosts; either
/// way the outcome stays consistent, because the late answer is recorded once and
/// the compensation or cancel reads it.
pub const DEADLINE_HEADER: &str = "x-saga-deadline";

/// The routing key replies to sagas of `saga_type` are published with.
pub fn reply_routing_key(saga_type: &str) -> String {
    format!("saga.{saga_type}.reply")
}

/// A command goes out as `{command}#{token}`: the participant's consumer routes it
/// by the part before `#` (see `txoutbox::wire::step_route`), and the token, unique per
/// command sent, keeps a resent command from looking like a redelivery of the first.
pub fn command_step(command: &str, token: &str) -> String {
    format!("{command}#{token}")
}

/// The step of the reply to the command sent as `command_step`: `{command}.reply#{token}`.
/// The orchestrator routes replies by `{command}.reply`, and its inbox takes each
/// command's reply once.
pub fn reply_step(command_step: &str) -> String {
    match command_step.split_once('#') {
        Some((command, token)) => format!("{command}.reply#{token}"),
        None => format!("{command_step}.reply"),
    }
}

/// The command a reply step answers.
pub fn parse_reply_step(step: &str) -> Option<&str> {
    let route = step.split_once('#').map_or(step, |(route, _)| route);
    route
        .strip_suffix(".reply")
        .filter(|command| !command.is_empty())
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
    fn a_reply_step_names_its_command_and_keeps_the_token() {
        let command = command_step("inventory.release", "0195");
        assert_eq!(command, "inventory.release#0195");
        let reply = reply_step(&command);
        assert_eq!(reply, "inventory.release.reply#0195");
        assert_eq!(parse_reply_step(&reply), Some("inventory.release"));
        assert_eq!(parse_reply_step("inventory.release"), None);
        assert_eq!(parse_reply_step(".reply#1"), None);
    }
}
