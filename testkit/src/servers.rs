//! Where the servers are: `DATABASE_URL` and `AMQP_URL`, or the README's local defaults.

use sqlx::{ConnectOptions, PgPool};

/// The PostgreSQL server the README asks for, as the repository's cargo config sets it.
pub(crate) const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The RabbitMQ server the README asks for, as the repository's cargo config sets it.
pub(crate) const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub(crate) const POSTGRES_PORT: u16 = 5432;
pub(crate) const AMQP_PORT: u16 = 5672;

/// The PostgreSQL server: `DATABASE_URL`, or `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// The RabbitMQ server: `AMQP_URL`, or `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// `AMQP_URL` with another user: for a test of what a user may not do.
pub fn amqp_url_as(user: &str, password: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&amqp_url()).map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?;
    url.set_username(user)
        .and_then(|()| url.set_password(Some(password)))
        .map_err(|()| anyhow::anyhow!("AMQP_URL takes no user"))?;
    Ok(url.to_string())
}

/// The URL of the database `pool` connects to (the one `#[sqlx::test]` made for the
/// test, say), for a child process.
pub fn database_url_of(pool: &PgPool) -> String {
    pool.connect_options().to_url_lossy().to_string()
}

/// The `host:port` of a server URL (`default_port` when it names none), or `None` when
/// it is no URL or names no host (a Unix socket).
pub(crate) fn address(url: &str, default_port: u16) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str().filter(|host| !host.is_empty())?;
    Some(format!("{host}:{}", parsed.port().unwrap_or(default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_a_server_url() {
        assert_eq!(
            address(DEFAULT_DATABASE_URL, POSTGRES_PORT).as_deref(),
            Some("127.0.0.1:5432")
        );
        assert_eq!(
            address("amqp://u:p@mq.internal/%2f", AMQP_PORT).as_deref(),
            Some("mq.internal:5672")
        );
        assert_eq!(
            address("postgres://[::1]:6432/x", POSTGRES_PORT).as_deref(),
            Some("[::1]:6432")
        );
        assert_eq!(address("postgres:///x?host=/run/postgresql", 5432), None);
        assert_eq!(address("not a url", 5432), None);
    }
}
