//! How the binary tells an operator why it stopped: each cause once, PostgreSQL's
//! refusals in its own words, and the next step when it is a known one.

/// The error and its causes, joined by ": ". A cause whose words the text already
/// holds is left out (an error's message often repeats its source's), and the chain
/// ends at a database error, told by [`txoutbox::postgres::describe`]: what lies
/// beneath it is the same refusal again.
pub(crate) fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let database = cause.downcast_ref::<sqlx::Error>();
        let words = database.map_or_else(|| cause.to_string(), txoutbox::postgres::describe);
        if !text.contains(&words) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&words);
        }
        if database.is_some() {
            break;
        }
    }
    text
}

/// What to do next, when PostgreSQL's refusal says this database lacks a table or
/// function of ours (the outbox's, the relay's, the sagas', the inbox's dead letters):
/// a database never migrated, or migrated by an older release.
pub(crate) fn advice(error: &anyhow::Error) -> Option<&'static str> {
    let refusal = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>()?.as_database_error())?;
    let missing = matches!(refusal.code().as_deref(), Some("42P01" | "42883"));
    let ours = ["outbox", "saga", "inbox"]
        .iter()
        .any(|name| refusal.message().contains(name));
    (missing && ours).then_some(
        "this database lacks tables or functions of the outbox toolkit (never migrated, or \
         migrated by an older release): run `outbox-relay migrate`, or start the relay \
         with `--migrate`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("claiming: {0}")]
    struct Claiming(#[source] std::io::Error);

    #[test]
    fn a_cause_the_message_already_holds_is_said_once() {
        let error = anyhow::Error::new(Claiming(std::io::Error::other("connection reset")));
        assert_eq!(describe(&error), "claiming: connection reset");
    }

    #[test]
    fn a_cause_the_message_does_not_hold_is_added() {
        let error = anyhow::Error::new(std::io::Error::other("no such file"))
            .context("reading DATABASE_URL_FILE");
        assert_eq!(describe(&error), "reading DATABASE_URL_FILE: no such file");
    }

    #[test]
    fn an_error_that_is_no_database_refusal_gets_no_advice() {
        let error = anyhow::Error::new(sqlx::Error::PoolTimedOut);
        assert_eq!(advice(&error), None);
        assert_eq!(describe(&error), sqlx::Error::PoolTimedOut.to_string());
    }
}
