//! Who may act. Actions are off unless a token is configured; a person proves they
//! hold it once, at the login form, and gets a session cookie (HttpOnly,
//! SameSite=Strict) and a CSRF token that every action's form carries back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "txoutbox_console";
/// A session ends this long after its login.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

struct Session {
    csrf: String,
    started: Instant,
}

/// The token, and the sessions of those who gave it.
pub(crate) struct Gate {
    token: Option<String>,
    /// Beyond loopback every page needs a login, not only the actions: the pages show
    /// payloads and headers.
    reads_need_login: bool,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A logged-in session, as a page needs it.
#[derive(Clone)]
pub(crate) struct Login {
    pub(crate) csrf: String,
}

impl Gate {
    pub(crate) fn new(token: Option<String>, reads_need_login: bool) -> Self {
        Self {
            token,
            reads_need_login,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// True when a page may be read: on loopback by anyone who reaches it; beyond
    /// loopback by a session, or a script that sends `Authorization: Bearer <token>`.
    pub(crate) fn may_read(
        &self,
        cookie_header: Option<&str>,
        authorization: Option<&str>,
    ) -> bool {
        if !self.reads_need_login {
            return true;
        }
        let bearer = authorization.and_then(|a| a.strip_prefix("Bearer "));
        let by_token = match (self.token.as_deref(), bearer) {
            (Some(token), Some(given)) => same(token.as_bytes(), given.trim().as_bytes()),
            _ => false,
        };
        by_token || self.login(cookie_header).is_some()
    }

    /// True when a token is configured, so actions can be unlocked at all.
    pub(crate) fn actions_enabled(&self) -> bool {
        self.token.is_some()
    }

    /// A new session's id when `given` is the token; None otherwise.
    pub(crate) fn log_in(&self, given: &str) -> Option<String> {
        let token = self.token.as_deref()?;
        if !same(token.as_bytes(), given.as_bytes()) {
            return None;
        }
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.started.elapsed() < SESSION_LIFETIME);
        sessions.insert(
            id.clone(),
            Session {
                csrf: random_hex(),
                started: Instant::now(),
            },
        );
        Some(id)
    }

    /// Ends the session `cookie` names.
    pub(crate) fn log_out(&self, cookie_header: Option<&str>) {
        if let Some(id) = session_id(cookie_header) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(id);
        }
    }

    /// The session the request's cookie names, while it lasts.
    pub(crate) fn login(&self, cookie_header: Option<&str>) -> Option<Login> {
        let id = session_id(cookie_header)?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(id)?;
        (session.started.elapsed() < SESSION_LIFETIME).then(|| Login {
            csrf: session.csrf.clone(),
        })
    }

    /// True when the request has a live session and the form carries its CSRF token.
    pub(crate) fn allows(&self, cookie_header: Option<&str>, csrf: &str) -> bool {
        self.login(cookie_header)
            .is_some_and(|login| same(login.csrf.as_bytes(), csrf.as_bytes()))
    }
}

/// The session id in a `Cookie:` header.
fn session_id(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Compares in time that does not depend on where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_opens_a_session_and_only_its_csrf_token_acts() {
        let gate = Gate::new(Some("the-token-of-the-test".into()), false);
        assert!(gate.log_in("the-token-of-the-tesT").is_none());
        assert!(gate.log_in("").is_none());
        let id = gate.log_in("the-token-of-the-test").expect("a session");
        let cookie = format!("other=1; {COOKIE}={id}");
        let csrf = gate.login(Some(&cookie)).expect("logged in").csrf;
        assert!(gate.allows(Some(&cookie), &csrf));
        assert!(!gate.allows(Some(&cookie), "forged"));
        assert!(!gate.allows(None, &csrf));
        gate.log_out(Some(&cookie));
        assert!(!gate.allows(Some(&cookie), &csrf));
    }

    #[test]
    fn beyond_loopback_reading_needs_a_session_or_the_token() {
        let gate = Gate::new(Some("the-token-of-the-test".into()), true);
        assert!(!gate.may_read(None, None));
        assert!(!gate.may_read(None, Some("Bearer wrong")));
        assert!(gate.may_read(None, Some("Bearer the-token-of-the-test")));
        let id = gate.log_in("the-token-of-the-test").expect("a session");
        assert!(gate.may_read(Some(&format!("{COOKIE}={id}")), None));
        assert!(Gate::new(None, false).may_read(None, None));
    }

    #[test]
    fn without_a_token_nobody_logs_in() {
        let gate = Gate::new(None, false);
        assert!(!gate.actions_enabled());
        assert!(gate.log_in("").is_none());
    }
}
