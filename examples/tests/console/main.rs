//! The console in a real browser: a support engineer finds a choreographed demo order
//! across its four services, logs in with the token, aborts a running orchestrated
//! saga and sees it compensated, and sends a dead letter back and sees it taken.
//! Screenshots of the pages go to `target/console-screenshots/` (README's come from
//! there).

mod browser;
mod fixtures;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use browser::Browser;
use examples::order_approval;
use fixtures::{KeptDemo, RunningConsole};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context, Reject};

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

const TOKEN: &str = "a-token-for-the-browser-test";
const NOTE: &str = "note.add";

/// Rejects notes while closed: the message is dead-lettered; once open, takes them.
async fn note(
    _ctx: Context<'_>,
    _body: serde_json::Value,
    open: Arc<AtomicBool>,
) -> Result<(), BoxError> {
    if open.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(Reject::new("the notes service is closed for the night").into())
    }
}

fn screenshots() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_support_engineer_follows_and_mends_sagas_in_a_browser(
    pool: PgPool,
) -> anyhow::Result<()> {
    if !testkit::installed_or_skip(
        "chromium",
        browser::installed(),
        "scripts/tools.sh installs chromium and chromium-driver",
    )? {
        return Ok(());
    }
    let demo = KeptDemo::run().await?;
    let outcome = follow_and_mend(&pool, &demo).await;
    demo.drop_all(&pool).await?;
    outcome
}

async fn follow_and_mend(pool: &PgPool, demo: &KeptDemo) -> anyhow::Result<()> {
    // The orchestrated process: order-4's capture never comes within the test.
    let lab = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let stop = CancellationToken::new();
    let process = tokio::spawn({
        let lab = lab.clone();
        let stop = stop.clone();
        async move {
            order_approval::run(&lab, &testkit::amqp_url(), Duration::from_secs(900), stop).await
        }
    });

    // A dead letter of the same order, in a consumer of the test's own.
    let open = Arc::new(AtomicBool::new(false));
    let queue = format!("test-console-notes-{}", uuid::Uuid::now_v7().simple());
    let config = ConsumerConfig::new(&queue);
    let broker = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await?;
    let channel = broker.create_channel().await?;
    config.declare(&channel).await?;
    let consumer = Consumer::new(lab.clone(), testkit::amqp_url(), "notes", config.clone())
        .on_with(NOTE, Arc::clone(&open), note)
        .spawn()?;
    let mut headers = FieldTable::default();
    headers.insert("saga_id".into(), AMQPValue::LongString("order-4".into()));
    headers.insert("step".into(), AMQPValue::LongString(NOTE.into()));
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"text":"call the customer"}"#,
            BasicProperties::default()
                .with_message_id("note-1".into())
                .with_headers(headers),
        )
        .await?
        .await?;

    let outcome = browse(pool, &lab, demo, &open).await;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), process).await;
    consumer.shutdown().await?;
    config.delete(&channel).await?;
    broker.close(200, "console test done".into()).await?;
    outcome
}

async fn browse(
    pool: &PgPool,
    lab: &PgPool,
    demo: &KeptDemo,
    open: &AtomicBool,
) -> anyhow::Result<()> {
    testkit::wait_until(
        Duration::from_secs(60),
        "the note is dead-lettered and order-4 waits",
        async || {
            let dead: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM inbox_dead_letter WHERE saga_id = 'order-4'",
            )
            .fetch_one(lab)
            .await?;
            let waiting: Option<String> = sqlx::query_scalar(
            "SELECT waiting_for FROM saga_instance WHERE saga_id = 'order-4' AND state = 'running'",
        )
        .fetch_optional(lab)
        .await?
        .flatten();
            Ok(dead == 1 && waiting.is_some())
        },
    )
    .await?;

    let mut databases: Vec<(String, String)> = demo
        .databases
        .iter()
        .map(|(service, name)| Ok((service.clone(), fixtures::url_of(name)?)))
        .collect::<anyhow::Result<_>>()?;
    databases.push(("approvals".to_owned(), testkit::database_url_of(pool)));
    let console =
        RunningConsole::start(&databases, TOKEN, "ShipmentCreated,InventoryReleased").await?;
    let browser = Browser::start().await?;
    let mut outcome = in_the_browser(&browser, &console, lab, demo, open).await;
    if outcome.is_err() {
        // What the browser saw when it failed, for the one reading the failure.
        let _ = browser.screenshot(&screenshots().join("failure.png")).await;
        if let Ok(source) = browser.client.source().await {
            let _ = std::fs::write(screenshots().join("failure.html"), source);
        }
    }
    let _ = browser.client.close().await;
    let log = console.stop().await?;
    if let Err(error) = outcome {
        outcome = Err(error.context(format!(
            "the page is in target/console-screenshots/failure.html; the console logged:\n{log}"
        )));
    }
    anyhow::ensure!(!log.contains(TOKEN), "the console logged its token:\n{log}");
    anyhow::ensure!(
        !log.contains("postgres://"),
        "the console logged a database URL:\n{log}"
    );
    outcome
}

async fn in_the_browser(
    b: &Browser,
    console: &RunningConsole,
    lab: &PgPool,
    demo: &KeptDemo,
    open: &AtomicBool,
) -> anyhow::Result<()> {
    // Home: every service, the demo's four and the approvals one.
    b.client.goto(&console.url("/")).await?;
    for (service, _) in &demo.databases {
        b.text(&format!("#service-{service}")).await?;
    }
    b.screenshot(&screenshots().join("console-home.png"))
        .await?;

    // A choreographed order, found by its id: its records from all four services.
    let order_db = demo
        .databases
        .iter()
        .find(|(s, _)| s == "order")
        .expect("the order service");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&fixtures::url_of(&order_db.1)?)
        .await?;
    let saga_id: String =
        sqlx::query_scalar("SELECT saga_id FROM inbox ORDER BY processed_at LIMIT 1")
            .fetch_one(&admin)
            .await?;
    admin.close().await;
    b.fill("input[name=q]", &saga_id).await?;
    b.click("#search").await?;
    anyhow::ensure!(
        b.text("#saga-id").await? == saga_id,
        "the search did not open {saga_id}"
    );
    let timeline = b.text("#timeline").await?;
    for (service, _) in &demo.databases {
        anyhow::ensure!(
            timeline.contains(service.as_str()),
            "{service} missing from the timeline:\n{timeline}"
        );
    }
    let now = b.text("#now").await?;
    anyhow::ensure!(
        now.contains("ShipmentCreated") || now.contains("InventoryReleased"),
        "{now}"
    );
    b.screenshot(&screenshots().join("console-saga-choreographed.png"))
        .await?;

    // Actions need the token: log in.
    b.client.goto(&console.url("/login")).await?;
    b.fill("#token", TOKEN).await?;
    b.click("#log-in").await?;
    b.text("#service-approvals").await?; // back on the home page, logged in

    // Abort the running orchestrated order, with a reason; see it compensated.
    b.client.goto(&console.url("/saga?id=order-4")).await?;
    b.fill(
        "form[action^='/actions/saga-abort'] input[name=reason]",
        "customer cancelled by phone",
    )
    .await?;
    b.click("#abort").await?;
    let notice = b.text("#notice").await?;
    anyhow::ensure!(
        notice.contains("abort of saga order-4 requested"),
        "{notice}"
    );
    testkit::wait_until(
        Duration::from_secs(60),
        "order-4 is compensated",
        async || {
            let state: String =
                sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = 'order-4'")
                    .fetch_one(lab)
                    .await?;
            Ok(state == "compensated")
        },
    )
    .await?;
    b.client.goto(&console.url("/saga?id=order-4")).await?;
    let now = b.text("#now").await?;
    anyhow::ensure!(now.starts_with("compensated"), "{now}");
    let timeline = b.text("#timeline").await?;
    anyhow::ensure!(
        timeline.contains("customer cancelled by phone"),
        "{timeline}"
    );
    b.screenshot(&screenshots().join("console-saga-orchestrated.png"))
        .await?;

    // Send the dead letter back once the notes service takes notes again.
    open.store(true, Ordering::SeqCst);
    b.client
        .goto(&console.url("/dead-letters?saga_id=order-4"))
        .await?;
    b.click("#dead-letters a[href^='/dead-letters/']").await?;
    b.fill(
        "form[action*='&id='] input[name=reason]",
        "notes service reopened",
    )
    .await?;
    b.click("#send-back").await?;
    let notice = b.text("#notice").await?;
    anyhow::ensure!(notice.contains("sent back"), "{notice}");
    testkit::wait_until(Duration::from_secs(60), "the note is taken", async || {
        let taken: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE consumer = 'notes' AND saga_id = 'order-4' AND step = $1",
        )
        .bind(NOTE)
        .fetch_one(lab)
        .await?;
        Ok(taken == 1)
    })
    .await?;
    b.client.goto(&console.url("/saga?id=order-4")).await?;
    let timeline = b.text("#timeline").await?;
    anyhow::ensure!(
        timeline.contains("sent back") && timeline.contains(NOTE),
        "{timeline}"
    );
    Ok(())
}
