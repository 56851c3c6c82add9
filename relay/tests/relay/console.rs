//! `outbox-relay console` over plain HTTP: who may reach it and act, and that nothing
//! from a database or the configuration leaks into a page as markup or as a secret.
//! The browser test (examples/tests/console) drives the same pages in Chromium.

use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;
use tokio::process::{Child, Command};
use txoutbox::Message;

use crate::support::*;

const TOKEN: &str = "the-console-token-of-this-test";

/// A password the trust-auth test server ignores, so it can be looked for in pages.
const PASSWORD: &str = "hunter2-never-shown";

struct Console {
    port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Console {
    async fn start(databases: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(databases, token, "127.0.0.1", &[]).await
    }

    async fn start_with(
        databases: &str,
        token: Option<&str>,
        address: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::env::temp_dir().join(format!("console-http-{port}.log"));
        let mut command = console_command(&["--listen", &format!("{address}:{port}")]);
        command.args(args);
        command
            .env("CONSOLE_DATABASES", databases)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?);
        if let Some(token) = token {
            command.env("CONSOLE_TOKEN", token);
        }
        let child = command.spawn()?;
        wait_until(Duration::from_secs(20), "the console listens", async || {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        })
        .await?;
        Ok(Self { port, child, log })
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        http_get(self.port, path).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &str) -> anyhow::Result<String> {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        testkit::http_post_form(self.port, path, &headers, form).await
    }

    /// Logs in; returns the cookie and the CSRF token a page's forms carry.
    async fn log_in(&self) -> anyhow::Result<(String, String)> {
        let answer = self.post("/login", None, &format!("token={TOKEN}")).await?;
        let cookie = answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .and_then(|c| c.split(';').next())
            .ok_or_else(|| anyhow::anyhow!("no session cookie:\n{answer}"))?
            .to_owned();
        let page = http_request_with_cookie(self.port, "/saga?id=order-1", &cookie).await?;
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| anyhow::anyhow!("no CSRF token on the page:\n{page}"))?
            .to_owned();
        Ok((cookie, csrf))
    }

    async fn stop(mut self) -> anyhow::Result<String> {
        stop(&mut self.child, Duration::from_secs(10)).await?;
        Ok(std::fs::read_to_string(&self.log)?)
    }
}

async fn http_request_with_cookie(port: u16, path: &str, cookie: &str) -> anyhow::Result<String> {
    testkit::http_request(port, "GET", path, &[("Cookie", cookie)], "").await
}

fn console_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .arg("console")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CONSOLE_DATABASES")
        .env_remove("CONSOLE_TOKEN")
        .env_remove("AMQP_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The test database's URL with a password in it.
fn with_password(pool: &PgPool) -> anyhow::Result<String> {
    let url = database_url_of(pool);
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let user = user.split(':').next().unwrap_or("postgres");
    Ok(format!("{scheme}://{user}:{PASSWORD}@{host}"))
}

async fn refusal(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let mut command = console_command(args);
    command.env(
        "CONSOLE_DATABASES",
        format!("a=postgres://u:{PASSWORD}@127.0.0.1/x"),
    );
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn beyond_loopback_without_a_token_the_console_refuses_to_start() -> TestResult {
    let (code, stderr) = refusal(&["--listen", "0.0.0.0:0"], &[]).await?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no token"), "{stderr}");
    let (code, stderr) = refusal(&["--listen", "0.0.0.0:0"], &[("CONSOLE_TOKEN", "short")]).await?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("shorter than"), "{stderr}");
    let (code, stderr) = refusal(
        &[],
        &[("CONSOLE_DATABASES", "a=mysql://u:hunter2-never-shown@h/x")],
    )
    .await?;
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn values_from_a_database_render_as_text_and_secrets_never_show(pool: PgPool) -> TestResult {
    let evil = "<script>alert('saga')</script>";
    let message =
        Message::builder(evil, "order.created", "orders").payload(&serde_json::json!({}))?;
    txoutbox::enqueue(&pool, &message).await?;
    sqlx::query("UPDATE outbox SET state = 'dead', attempts = 9, last_error = '<script>alert(\"error\")</script>'")
        .execute(&pool)
        .await?;
    let databases = format!(
        "orders={} down=postgres://u:{PASSWORD}@127.0.0.1:1/nowhere",
        with_password(&pool)?
    );
    let console = Console::start(&databases, None).await?;

    let saga = console
        .get("/saga?id=%3Cscript%3Ealert('saga')%3C%2Fscript%3E")
        .await?;
    assert!(
        saga.starts_with("HTTP/1.0 200") || saga.starts_with("HTTP/1.1 200"),
        "{saga}"
    );
    let headers = saga.split("\r\n\r\n").next().unwrap_or("").to_lowercase();
    assert!(
        headers.contains("content-security-policy: default-src 'none'"),
        "{headers}"
    );
    assert!(
        headers.contains("x-content-type-options: nosniff"),
        "{headers}"
    );
    assert!(
        !saga.contains("<script>"),
        "markup from the database reached the page:\n{saga}"
    );
    assert!(saga.contains("&lt;script&gt;alert"), "{saga}");

    let mut pages = vec![saga];
    for path in [
        "/",
        "/parked",
        "/dead-letters",
        "/api/home",
        "/search?q=%3Cscript",
        "/api/saga?id=x",
    ] {
        let page = console.get(path).await?;
        assert!(!page.contains("<script>"), "{path}:\n{page}");
        pages.push(page);
    }
    let home = &pages[1];
    assert!(
        home.contains("cannot read this database"),
        "the down database is not reported:\n{home}"
    );
    let log = console.stop().await?;
    for text in pages.iter().chain([&log]) {
        assert!(!text.contains(PASSWORD), "a password leaked:\n{text}");
        assert!(!text.contains("postgres://"), "a URL leaked:\n{text}");
    }
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn actions_need_the_token_a_session_its_csrf_token_and_a_reason(pool: PgPool) -> TestResult {
    let message =
        Message::builder("order-1", "order.created", "orders").payload(&serde_json::json!({}))?;
    let id = txoutbox::enqueue(&pool, &message).await?;
    sqlx::query("UPDATE outbox SET state = 'dead', attempts = 9, last_error = 'refused'")
        .execute(&pool)
        .await?;
    let databases = format!("orders={}", database_url_of(&pool));
    let retry = format!("/actions/outbox-retry?service=orders&id={id}");

    // No token configured: actions are off, whatever is posted.
    let read_only = Console::start(&databases, None).await?;
    let answer = read_only.post(&retry, None, "csrf=x&reason=r").await?;
    assert!(answer.contains(" 403 "), "{answer}");
    assert!(
        read_only
            .post("/login", None, "token=anything")
            .await?
            .contains(" 403 ")
    );
    read_only.stop().await?;

    let console = Console::start(&databases, Some(TOKEN)).await?;
    assert!(
        console
            .post(&retry, None, "csrf=x&reason=r")
            .await?
            .contains(" 403 "),
        "no session"
    );
    assert!(
        console
            .post("/login", None, "token=wrong-token-but-long")
            .await?
            .contains(" 403 ")
    );
    let (cookie, csrf) = console.log_in().await?;
    let forged = console
        .post(&retry, Some(&cookie), "csrf=forged&reason=r")
        .await?;
    assert!(forged.contains(" 403 "), "{forged}");
    let unexplained = console
        .post(&retry, Some(&cookie), &format!("csrf={csrf}&reason=+"))
        .await?;
    assert!(unexplained.contains(" 400 "), "{unexplained}");
    let state: String = sqlx::query_scalar("SELECT state FROM outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(state, "dead", "a refused action changed the row");

    let done = console
        .post(
            &retry,
            Some(&cookie),
            &format!("csrf={csrf}&reason=broker+fixed&return_to=%2Fparked"),
        )
        .await?;
    assert!(
        done.contains(" 200 ") && done.contains("fresh set of attempts"),
        "{done}"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(state, "pending");
    let audit: (String, String, Option<String>, String) =
        sqlx::query_as("SELECT action, reason, saga_id, actor FROM txoutbox_audit")
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        audit,
        (
            "outbox_retry".into(),
            "broker fixed".into(),
            Some("order-1".into()),
            "console".into()
        )
    );

    let json = console.get("/api/saga?id=order-1").await?;
    let value: serde_json::Value = serde_json::from_str(testkit::body(&json))?;
    assert_eq!(value["position"]["mode"], "choreographed", "{value}");
    assert!(
        value["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["kind"] == "operator")),
        "{value}"
    );
    console.stop().await?;
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_read_only_role_is_enough_to_view(pool: PgPool) -> TestResult {
    let message =
        Message::builder("order-1", "order.created", "orders").payload(&serde_json::json!({}))?;
    txoutbox::enqueue(&pool, &message).await?;
    let role = format!("console_viewer_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(&pool)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
    )))
    .execute(&pool)
    .await?;
    let url = database_url_of(&pool);
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let console = Console::start(&format!("orders={scheme}://{role}@{host}"), None).await?;
    let mut pages = Vec::new();
    for path in [
        "/",
        "/saga?id=order-1",
        "/dead-letters",
        "/parked",
        "/search?q=order",
    ] {
        pages.push((path, console.get(path).await?));
    }
    console.stop().await?;
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await?;
    }
    for (path, page) in pages {
        assert!(page.contains(" 200 "), "{path}:\n{page}");
        assert!(
            !page.contains("cannot read") && !page.contains("permission denied"),
            "{path}:\n{page}"
        );
    }
    Ok(())
}

/// A dead letter whose every field a sender controls holds markup.
async fn hostile_dead_letter(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        r#"INSERT INTO inbox_dead_letter
               (consumer, queue, message_id, saga_id, step, reason, kind, attempts, last_error, headers, body)
           VALUES ('pay<script>', 'q<script>', '<script>m</script>', '<script>s</script>',
                   '<script>step</script>', 'rejected: <script>alert(1)</script>', 'rejected', 1,
                   '<script>alert(2)</script>', '{"<script>": "<script>alert(3)</script>"}',
                   convert_to('{"note": "<script>alert(4)</script>"}', 'UTF8'))
           RETURNING id"#,
    )
    .fetch_one(pool)
    .await?)
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_dead_letter_full_of_markup_renders_as_text(pool: PgPool) -> TestResult {
    let id = hostile_dead_letter(&pool).await?;
    let console = Console::start(&format!("orders={}", database_url_of(&pool)), None).await?;
    for path in [
        format!("/dead-letters/orders/{id}"),
        "/dead-letters".to_owned(),
        "/dead-letters?saga_id=%3Cscript%3Es%3C%2Fscript%3E".to_owned(),
        "/saga?id=%3Cscript%3Es%3C%2Fscript%3E".to_owned(),
        "/search?q=%3Cscript".to_owned(),
        "/".to_owned(),
    ] {
        let page = console.get(&path).await?;
        assert!(page.contains(" 200 "), "{path}:\n{page}");
        assert!(!page.contains("<script"), "markup reached {path}:\n{page}");
    }
    let shown = console.get(&format!("/dead-letters/orders/{id}")).await?;
    assert!(
        shown.contains("&lt;script&gt;alert(4)"),
        "the payload is not shown:\n{shown}"
    );
    console.stop().await?;
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_csrf_token_of_another_session_and_a_foreign_host_are_refused(
    pool: PgPool,
) -> TestResult {
    let message =
        Message::builder("order-1", "order.created", "orders").payload(&serde_json::json!({}))?;
    let id = txoutbox::enqueue(&pool, &message).await?;
    sqlx::query("UPDATE outbox SET state = 'dead'")
        .execute(&pool)
        .await?;
    let databases = format!("orders={}", database_url_of(&pool));
    let console = Console::start(&databases, Some(TOKEN)).await?;
    let (cookie, _) = console.log_in().await?;
    let (_, other_csrf) = console.log_in().await?;
    let retry = format!("/actions/outbox-retry?service=orders&id={id}");
    let answer = console
        .post(
            &retry,
            Some(&cookie),
            &format!("csrf={other_csrf}&reason=r"),
        )
        .await?;
    assert!(answer.contains(" 403 "), "{answer}");

    // A web page that rebound its own name to 127.0.0.1 names itself in Host.
    let rebound = raw_get(console.port, "/api/home", "evil.example:8480").await?;
    assert!(rebound.contains(" 421 "), "{rebound}");
    let state: String = sqlx::query_scalar("SELECT state FROM outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(state, "dead");
    console.stop().await?;
    Ok(())
}

/// A GET whose only Host header is `host`.
async fn raw_get(port: u16, path: &str, host: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await??;
    Ok(answer)
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn beyond_loopback_every_page_needs_a_login(pool: PgPool) -> TestResult {
    // A parked row, so that its saga's page has an action form for `log_in` to read.
    let message =
        Message::builder("order-1", "order.created", "orders").payload(&serde_json::json!({}))?;
    txoutbox::enqueue(&pool, &message).await?;
    sqlx::query("UPDATE outbox SET state = 'dead'")
        .execute(&pool)
        .await?;
    let databases = format!("orders={}", database_url_of(&pool));
    let console = Console::start_with(&databases, Some(TOKEN), "0.0.0.0", &[]).await?;
    let page = console.get("/").await?;
    assert!(
        page.contains(" 303 ") && page.to_lowercase().contains("location: /login"),
        "{page}"
    );
    let api = console.get("/api/home").await?;
    assert!(api.contains(" 401 "), "{api}");
    assert!(console.get("/login").await?.contains(" 200 "));
    let bearer = format!("Bearer {TOKEN}");
    let with_token = testkit::http_request(
        console.port,
        "GET",
        "/api/home",
        &[("Authorization", &bearer)],
        "",
    )
    .await?;
    assert!(with_token.contains(" 200 "), "{with_token}");
    let (cookie, _) = console.log_in().await?;
    let logged_in = http_request_with_cookie(console.port, "/", &cookie).await?;
    assert!(logged_in.contains(" 200 "), "{logged_in}");
    console.stop().await?;
    Ok(())
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_quiet_saga_not_at_a_final_step_is_stuck(pool: PgPool) -> TestResult {
    sqlx::query(
        "INSERT INTO inbox (consumer, saga_id, step, processed_at) VALUES
             ('c', 'quiet-1', 'Reserved', now() - interval '1 hour'),
             ('c', 'done-1', 'Reserved', now() - interval '2 hours'),
             ('c', 'done-1', 'Shipped', now() - interval '1 hour'),
             ('c', 'busy-1', 'Reserved', now() - interval '1 hour'),
             ('c', 'fresh-1', 'Reserved', now())",
    )
    .execute(&pool)
    .await?;
    // busy-1 wrote a message a moment ago: quiet in the inbox, busy in the outbox.
    let busy = Message::builder("busy-1", "Charged", "orders").payload(&serde_json::json!({}))?;
    txoutbox::enqueue(&pool, &busy).await?;
    let databases = format!("orders={}", database_url_of(&pool));
    let args = ["--stuck-after", "10m", "--final-step", "Shipped"];
    let console = Console::start_with(&databases, None, "127.0.0.1", &args).await?;
    let stuck = std::sync::Mutex::new(serde_json::Value::Null);
    wait_until(
        Duration::from_secs(20),
        "the first look for stuck sagas ends",
        async || {
            let home = console.get("/api/home").await?;
            let value: serde_json::Value = serde_json::from_str(testkit::body(&home))?;
            let found = !value["stuck"].is_null();
            *stuck.lock().unwrap() = value["stuck"].clone();
            Ok(found)
        },
    )
    .await?;
    let stuck = stuck.into_inner().unwrap();
    let ids: Vec<&str> = stuck["sagas"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["saga_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["quiet-1"], "{stuck}");
    let page = console.get("/saga?id=quiet-1").await?;
    assert!(page.contains("STUCK"), "{page}");
    console.stop().await?;
    Ok(())
}
