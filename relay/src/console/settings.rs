//! What the console is told to read and how it may be reached, checked before it
//! listens: a bad entry is a configuration error that names the entry, never its URL.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use txoutbox_relay::redact_url;

/// The shortest token the console takes: shorter ones are guessable over a network.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// One service's database, by the name the pages show.
#[derive(Clone)]
pub(crate) struct ServiceDatabase {
    pub(crate) name: String,
    pub(crate) options: PgConnectOptions,
}

/// The console's whole configuration.
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) databases: Vec<ServiceDatabase>,
    /// None: actions are off, the pages only read.
    pub(crate) token: Option<String>,
    /// For sending dead letters back; None: that action says why it is off.
    pub(crate) amqp_url: Option<String>,
    pub(crate) stuck_after: Duration,
    pub(crate) lookback: Duration,
    pub(crate) final_steps: Vec<String>,
}

impl Settings {
    /// Refuses what would expose the console: any address but loopback with no
    /// token, and a token short enough to guess.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(token) = &self.token
            && token.chars().count() < MIN_TOKEN_LEN
        {
            return Err(format!(
                "the console token is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(format!(
                "the console would listen on {}, beyond this machine, with no token: set \
                 CONSOLE_TOKEN (or --token-file), or listen on 127.0.0.1",
                self.listen
            ));
        }
        if self.databases.is_empty() {
            return Err("the console has no database to read".to_owned());
        }
        Ok(())
    }
}

/// Parses `name=postgres://...` entries separated by white space; `#` starts a
/// comment. Errors name the entry by its position and name, not its URL.
pub(crate) fn parse_databases(text: &str) -> Result<Vec<ServiceDatabase>, String> {
    let mut databases: Vec<ServiceDatabase> = Vec::new();
    let entries = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace);
    for (index, entry) in entries.enumerate() {
        let position = index + 1;
        let Some((name, url)) = entry.split_once('=') else {
            return Err(format!(
                "database entry {position} is not name=postgres://...: {}",
                redact_url(entry)
            ));
        };
        check_name(name).map_err(|why| format!("database entry {position}: {why}"))?;
        if databases.iter().any(|d| d.name == name) {
            return Err(format!("database name {name} is given twice"));
        }
        databases.push(ServiceDatabase {
            name: name.to_owned(),
            options: parse_url(url).map_err(|why| format!("database {name}: {why}"))?,
        });
    }
    Ok(databases)
}

/// A PostgreSQL URL, checked as `outbox-relay` checks DATABASE_URL.
pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions, String> {
    let not_postgres = || format!("not a PostgreSQL URL: {}", redact_url(url));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(not_postgres());
    }
    url.parse().map_err(|_| not_postgres())
}

/// Names go into links and page titles: short and plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "the name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen: &str, token: Option<&str>) -> Settings {
        Settings {
            listen: listen.parse().unwrap(),
            databases: parse_databases("a=postgres://u@h/db").unwrap(),
            token: token.map(str::to_owned),
            amqp_url: None,
            stuck_after: Duration::from_secs(60),
            lookback: Duration::from_secs(3600),
            final_steps: Vec::new(),
        }
    }

    #[test]
    fn entries_are_named_and_separated_by_spaces_or_lines() {
        let text = "# the demo\norders=postgres://u:pw@h/o  payments=postgres://h/p\n\nshipping=postgresql://h/s # last";
        let names: Vec<String> = parse_databases(text)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["orders", "payments", "shipping"]);
    }

    #[test]
    fn a_bad_entry_is_refused_without_its_password() {
        for text in [
            "orders postgres://u:secret@h/o",
            "orders=mysql://u:secret@h/o",
            "<b>=postgres://u:secret@h/o",
            "a=postgres://u:secret@h/o a=postgres://u:secret@h/p",
        ] {
            let error = parse_databases(text).err().expect(text);
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn beyond_loopback_needs_a_token_of_some_length() {
        assert!(settings("127.0.0.1:0", None).check().is_ok());
        assert!(settings("[::1]:0", None).check().is_ok());
        assert!(settings("0.0.0.0:0", None).check().is_err());
        assert!(settings("0.0.0.0:0", Some("short")).check().is_err());
        assert!(
            settings("0.0.0.0:0", Some("a-long-enough-token"))
                .check()
                .is_ok()
        );
    }
}
