//! A PostgreSQL that cannot be used is named, with its cause, at once: refused, an
//! unknown host, a role or database that does not exist, a read-only server. Never
//! "pool timed out" ten seconds later, and never the password.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

const PASSWORD: &str = "hunter2-never-printed";

/// How long a relay may take to publish or to say what it sees: many times what it needs.
const WAIT: Duration = Duration::from_secs(60);

async fn status_of(url: &str) -> anyhow::Result<(Option<i32>, String)> {
    let output = relay_cli(&["status"], &[("DATABASE_URL", url)]).await?;
    Ok((output.status.code(), text(&output)))
}

#[tokio::test]
async fn a_command_names_the_server_and_the_cause_at_once() -> TestResult {
    for (url, names, cause) in [
        (
            format!("postgres://app:{PASSWORD}@127.0.0.1:1/orders"),
            "PostgreSQL at 127.0.0.1:1/orders as app",
            "connection refused",
        ),
        (
            format!("postgres://app:{PASSWORD}@no-such-host.invalid/orders"),
            "PostgreSQL at no-such-host.invalid:5432/orders as app",
            "unknown host",
        ),
    ] {
        let (code, said) = status_of(&url).await?;
        assert_eq!(code, Some(1), "{said}");
        assert!(said.contains(names) && said.contains(cause), "{said}");
        assert!(
            !said.contains(PASSWORD) && !said.contains("pool timed out"),
            "{said}"
        );
    }
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_missing_role_or_database_is_named(pool: PgPool) -> TestResult {
    let url = database_url_of(&pool);
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let server = host.split('/').next().unwrap_or(host);
    let (code, said) = status_of(&format!("{scheme}://no_such_role_here@{host}")).await?;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("authentication failed") && said.contains("no_such_role_here"),
        "{said}"
    );
    let (code, said) = status_of(&format!("{scheme}://postgres@{server}/no_such_database")).await?;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("database \"no_such_database\" does not exist"),
        "{said}"
    );

    // The relay stops too: no retry fixes a database that does not exist.
    let mut relay = relay_command(
        &format!("{scheme}://postgres@{server}/no_such_database"),
        &amqp_url(),
        "unused",
        "127.0.0.1:0",
    )
    .stderr(Stdio::piped())
    .spawn()?;
    let stopped = tokio::time::timeout(Duration::from_secs(30), relay.wait()).await??;
    assert_eq!(stopped.code(), Some(1));
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_read_only_server_is_named_as_such(pool: PgPool) -> TestResult {
    let url = database_url_of(&pool);
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" SET default_transaction_read_only = on"
    )))
    .execute(&pool)
    .await?;
    let migrate = relay_cli(&["migrate"], &[("DATABASE_URL", &url)]).await?;
    let said = text(&migrate);
    assert_eq!(migrate.status.code(), Some(1), "{said}");
    assert!(
        said.contains("read-only (transaction_read_only = on)"),
        "{said}"
    );
    // Reading needs no writes.
    let status = relay_cli(&["status"], &[("DATABASE_URL", &url)]).await?;
    assert!(status.status.success(), "{}", text(&status));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" RESET default_transaction_read_only"
    )))
    .execute(&pool)
    .await?;
    Ok(())
}

/// A database that turns read-only under a running relay (a failover to a standby
/// not promoted yet looks the same) is named with its cause in the relay's log, and
/// the relay goes on publishing once it takes writes again.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_running_relay_names_a_read_only_database_and_goes_on(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    let mut relay = relay_command(
        &database_url_of(&pool),
        &amqp_url(),
        &sandbox.exchange,
        "127.0.0.1:0",
    )
    .spawn()?;
    let logs = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(relay.stderr.take().expect("piped")).lines();
    let kept = Arc::clone(&logs);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[relay] {line}");
            kept.lock()
                .expect("never poisoned")
                .push_str(&(line + "\n"));
        }
    });
    let before = fill(&pool, 4, 10, "read-only").await?;
    sandbox.wait_for_all(&before, WAIT).await?;

    testkit::set_read_only(&database, true).await?;
    let named = format!(
        "PostgreSQL at {}",
        txoutbox::reach::server_of(&pool.connect_options())
    );
    let said = async || {
        let logs = logs.lock().expect("never poisoned");
        Ok(logs.contains(&named) && logs.contains("read-only (transaction_read_only = on)"))
    };
    testkit::wait_until(WAIT, "the relay names the read-only server", said).await?;

    testkit::set_read_only(&database, false).await?;
    let after = fill(&pool, 4, 10, "read-only").await?;
    sandbox.wait_for_all(&after, WAIT).await?;
    assert_eq!(relay.try_wait()?, None, "the relay ran on throughout");
    let logs = logs.lock().expect("never poisoned").clone();
    assert!(!logs.contains("pool timed out"), "{logs}");
    sandbox.remove().await
}
