//! The operator's side: the command line, its exit codes, and the HTTP endpoints.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use txoutbox::Message;
use txoutbox_relay::Relay;

use crate::support::*;

/// Arguments, environment, and what the error must say.
type BadConfig<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test]
async fn bad_configuration_is_a_clear_message_and_exit_code_2() -> TestResult {
    let db = (
        "DATABASE_URL",
        "postgres://app:hunter2@127.0.0.1:5432/postgres",
    );
    let long_id = "relay".repeat(41);
    let cases: Vec<BadConfig> = vec![
        (vec!["run"], vec![], "DATABASE_URL is not set"),
        (vec!["run"], vec![db], "AMQP_URL is not set"),
        (
            vec!["run"],
            vec![db, ("AMQP_URL", "http://guest:hunter2@mq")],
            "AMQP_URL: node 1 is not an AMQP URL",
        ),
        (
            vec!["run"],
            vec![
                db,
                (
                    "AMQP_URL",
                    "amqp://guest:hunter2@mq-1,,amqp://guest:hunter2@mq-2",
                ),
            ],
            "node 2 of the list is empty",
        ),
        (
            vec!["run"],
            vec![
                db,
                (
                    "AMQP_URL",
                    "amqp://guest:hunter2@mq-1/a,amqp://guest:hunter2@mq-2/b",
                ),
            ],
            "has another virtual host than node 1",
        ),
        (
            vec!["run"],
            vec![db, ("AMQP_URL", "amqp://guest:hunter2@mq/%2f?heartbeat=0")],
            "heartbeat=0, which turns heartbeats off",
        ),
        (
            vec!["status"],
            vec![("DATABASE_URL", "mysql://root:hunter2@db/x")],
            "not a PostgreSQL URL",
        ),
        (vec!["run", "--batch-size", "0"], vec![db], "batch-size"),
        (
            vec!["run", "--lease-ttl", "2s", "--heartbeat-interval", "5s"],
            vec![db, ("AMQP_URL", "amqp://mq")],
            "heartbeat",
        ),
        (
            vec!["run", "--retry-base", "soon"],
            vec![db],
            "not a duration",
        ),
        (
            vec!["status", "--database-url-file", "/nonexistent/url"],
            vec![],
            "cannot read DATABASE_URL",
        ),
        (vec!["frobnicate"], vec![db], "unrecognized"),
        (
            vec!["run"],
            vec![
                db,
                ("AMQP_URL", "amqp://mq"),
                ("OUTBOX_INSTANCE_ID", &long_id),
            ],
            "instance_id must be at most 200 characters",
        ),
    ];
    for (args, env, expected) in cases {
        let output = relay_cli(&args, &env).await?;
        let said = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains(expected),
            "{args:?}: expected {expected:?} in {said}"
        );
        assert!(
            !said.contains("hunter2"),
            "{args:?} leaked a password: {said}"
        );
    }
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn status_inspect_and_dead_retry_from_the_command_line(pool: PgPool) -> TestResult {
    let url = database_url_of(&pool);
    let env = [("DATABASE_URL", url.as_str())];
    let stuck = Message::builder("saga-2am", "PaymentCharged", "payments.charged")
        .payload(&serde_json::json!({}))?;
    let stuck_id = txoutbox::enqueue(&pool, &stuck).await?;
    let waiting = Message::builder("saga-2am", "ShipmentCreated", "shipping.created")
        .payload(&serde_json::json!({}))?;
    txoutbox::enqueue(&pool, &waiting).await?;
    sqlx::query("UPDATE outbox SET state = 'dead', attempts = 10, last_error = 'unroutable: 312 NO_ROUTE' WHERE id = $1")
        .bind(stuck_id)
        .execute(&pool)
        .await?;

    let migrate = relay_cli(&["migrate"], &env).await?;
    assert!(migrate.status.success(), "{}", text(&migrate));

    let status = relay_cli(&["status"], &env).await?;
    let said = text(&status);
    assert!(status.status.success(), "{said}");
    assert!(
        said.contains("backlog:             1 unsent") && said.contains("dead:                1"),
        "{said}"
    );

    let inspect = relay_cli(&["inspect", "saga-2am"], &env).await?;
    let said = text(&inspect);
    assert!(
        said.contains("PaymentCharged") && said.contains("dead") && said.contains("NO_ROUTE"),
        "{said}"
    );
    assert!(
        said.find("PaymentCharged") < said.find("ShipmentCreated"),
        "write order: {said}"
    );

    let json = relay_cli(&["inspect", "saga-2am", "--json"], &env).await?;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(value["messages"][0]["state"], "dead");
    assert_eq!(value["messages"][1]["state"], "pending");

    let listed = relay_cli(&["dead", "list"], &env).await?;
    assert!(text(&listed).contains(&stuck_id.to_string()));

    let unknown = relay_cli(&["dead", "retry", &uuid::Uuid::now_v7().to_string()], &env).await?;
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));

    let retried = relay_cli(&["dead", "retry", &stuck_id.to_string()], &env).await?;
    assert!(retried.status.success(), "{}", text(&retried));
    let state: String = sqlx::query_scalar("SELECT state FROM outbox WHERE id = $1")
        .bind(stuck_id)
        .fetch_one(&pool)
        .await?;
    assert_eq!(state, "pending");
    let all = relay_cli(&["dead", "retry", "--all"], &env).await?;
    assert!(text(&all).contains("0 dead row(s)"), "{}", text(&all));
    Ok(())
}

/// A newcomer's first mistake: the relay pointed at a database nobody migrated.
/// Every command says which table is missing, once, in PostgreSQL's words with its
/// SQLSTATE, and what to run; after `migrate` the same commands work.
#[sqlx::test(migrations = false)]
async fn a_database_never_migrated_is_named_with_the_command_that_fixes_it(
    pool: PgPool,
) -> TestResult {
    let url = database_url_of(&pool);
    let amqp = amqp_url();
    let env = [("DATABASE_URL", url.as_str()), ("AMQP_URL", amqp.as_str())];
    for args in [
        &["run"][..],
        &["status"],
        &["dead", "list"],
        &["inspect", "saga-1"],
        &["saga", "list"],
    ] {
        let output = relay_cli(args, &env).await?;
        let said = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {said}");
        assert_eq!(
            said.matches("does not exist (SQLSTATE 42P01)").count(),
            1,
            "{args:?}: the refusal, once: {said}"
        );
        assert!(
            said.contains("run `outbox-relay migrate`"),
            "{args:?}: {said}"
        );
        assert!(!said.contains(" at line "), "{args:?}: {said}");
    }

    let migrate = relay_cli(&["migrate"], &env).await?;
    assert!(migrate.status.success(), "{}", text(&migrate));
    let status = relay_cli(&["status"], &env).await?;
    assert!(status.status.success(), "{}", text(&status));
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn health_readiness_and_metrics_over_http(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let relay = Relay::new(pool.clone(), amqp_url(), fast_config(&sandbox.exchange));
    let metrics = relay.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let stop = CancellationToken::new();
    tokio::spawn(txoutbox_relay::serve_http(
        listener,
        metrics.clone(),
        pool.clone(),
        stop.clone(),
    ));

    assert!(
        http_get(port, "/healthz")
            .await?
            .starts_with("HTTP/1.1 200")
    );
    let readyz = http_get(port, "/readyz").await?;
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("RabbitMQ not connected"),
        "not ready before connecting: {readyz}"
    );
    let relay = relay.spawn();
    let ids = fill(&pool, 3, 10, "metrics").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(20)).await?;
    let readyz = http_get(port, "/readyz").await?;
    let node = txoutbox::url::redact(&amqp_url());
    assert!(
        readyz.starts_with("HTTP/1.1 200") && readyz.contains(&node),
        "ready, naming the node: {readyz}"
    );
    // A row counts as published once its confirm is back, which may come after the
    // consumer already has the message.
    let counted = wait_until(
        Duration::from_secs(10),
        "30 rows count as published",
        async || {
            Ok(http_get(port, "/metrics")
                .await?
                .contains("outbox_relay_published_total 30\n"))
        },
    )
    .await;
    let scrape = http_get(port, "/metrics").await?;
    assert!(counted.is_ok(), "{scrape}");
    assert!(
        scrape.contains("outbox_relay_publish_latency_seconds_count"),
        "{scrape}"
    );
    assert!(scrape.contains("outbox_relay_backlog "), "{scrape}");
    assert!(http_get(port, "/nope").await?.starts_with("HTTP/1.1 404"));
    relay.shutdown().await?;
    stop.cancel();
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_clean_stop_logs_no_error(pool: PgPool) -> TestResult {
    use tokio::io::AsyncReadExt;

    let sandbox = Sandbox::new("#").await?;
    let mut relay = relay_command(
        &database_url_of(&pool),
        &amqp_url(),
        &sandbox.exchange,
        "127.0.0.1:0",
    )
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    let ids = fill(&pool, 5, 20, "stopping").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    let mut stderr = relay.stderr.take().expect("piped");
    let status = stop(&mut relay, Duration::from_secs(15)).await?;
    let mut logged = String::new();
    stderr.read_to_string(&mut logged).await?;
    assert!(status.success(), "{logged}");
    // An operator alerts on ERROR: a deploy must not raise one.
    assert!(
        !logged.contains("ERROR"),
        "a clean stop logged an error: {logged}"
    );
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_delayed_row_is_not_late_until_it_is_due(pool: PgPool) -> TestResult {
    let later = Message::builder("saga-delayed", "Remind", "reminders")
        .delay(Duration::from_secs(3600))
        .payload(&())?;
    txoutbox::enqueue(&pool, &later).await?;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '10 minutes'")
        .execute(&pool)
        .await?;
    let backlog = txoutbox_relay::backlog(&pool).await?;
    assert_eq!(
        (backlog.unsent, backlog.oldest_unsent_age_seconds),
        (1, 0.0)
    );

    // Due two minutes ago: late by two minutes, not by its ten minutes of age.
    let age = age_after(
        &pool,
        "UPDATE outbox SET available_at = now() - interval '2 minutes'",
    )
    .await?;
    assert!((119.0..130.0).contains(&age), "{age}");

    // A writer that set `available_at` before the row existed (another language's
    // client, a clock): late since it was written, not since the made-up time.
    let age = age_after(
        &pool,
        "UPDATE outbox SET available_at = created_at - interval '1 day'",
    )
    .await?;
    assert!((599.0..610.0).contains(&age), "{age}");

    // Retried since: late since it was written.
    let retried = "UPDATE outbox SET attempts = 2, state = 'retry', available_at = now() + interval '1 minute'";
    let age = age_after(&pool, retried).await?;
    assert!((599.0..610.0).contains(&age), "{age}");
    Ok(())
}

/// The backlog's oldest unsent age once `change` has run.
async fn age_after(pool: &PgPool, change: &'static str) -> anyhow::Result<f64> {
    sqlx::query(change).execute(pool).await?;
    Ok(txoutbox_relay::backlog(pool)
        .await?
        .oldest_unsent_age_seconds)
}

/// A Kubernetes Secret mounted as a file, as `deploy/kubernetes` does it: the URL in
/// a file that ends with a newline, named by `DATABASE_URL_FILE`, no `DATABASE_URL`.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn the_database_url_is_read_from_a_file(pool: PgPool) -> TestResult {
    let dir = std::env::temp_dir().join(format!("relay-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("database-url");
    std::fs::write(&file, format!("{}\n", database_url_of(&pool)))?;
    let path = file.display().to_string();
    let status = relay_cli(&["status"], &[("DATABASE_URL_FILE", path.as_str())]).await?;
    let flag = relay_cli(&["status", "--database-url-file", path.as_str()], &[]).await?;
    std::fs::remove_dir_all(&dir)?;
    assert!(status.status.success(), "{}", text(&status));
    assert!(flag.status.success(), "{}", text(&flag));
    Ok(())
}

/// The worst a secret file can hold: nothing, a device read without end, a URL no
/// parser reads whose password has a `/`. Each is refused with its reason, and the
/// password is never printed.
#[tokio::test]
async fn a_bad_database_url_file_is_refused_with_its_reason_and_no_password() -> TestResult {
    let dir = std::env::temp_dir().join(format!("relay-bad-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n")?;
    let unreadable = dir.join("unreadable-url");
    std::fs::write(&unreadable, "postgres://app:pa/ss@db/shop\n")?;
    let cases = [
        (empty.display().to_string(), "the file is empty"),
        ("/dev/zero".to_owned(), "over 65536 bytes"),
        (
            unreadable.display().to_string(),
            "not a PostgreSQL URL: postgres://app:***@db/shop",
        ),
    ];
    for (path, reason) in &cases {
        let output = relay_cli(&["status"], &[("DATABASE_URL_FILE", path.as_str())]).await?;
        let printed = text(&output);
        assert!(!output.status.success(), "{path}: {printed}");
        assert!(printed.contains(reason), "{path}: {printed}");
        assert!(!printed.contains("pa/ss"), "{path}: {printed}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
