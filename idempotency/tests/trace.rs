//! One trace from the writer's outbox row, through the relay and RabbitMQ, into the
//! handler of the next service and on to what that handler sends (feature
//! `opentelemetry`, which this crate's tests turn on).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;
use sqlx::PgPool;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use txoutbox::wire::TRACEPARENT_HEADER;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context};
use txoutbox_relay::{Relay, RelayConfig};

type TestResult = anyhow::Result<()>;

/// Spans become OpenTelemetry spans, with ids and no exporter. Global, because the
/// consumer and the relay run on tasks of their own, on other threads.
fn install_tracing() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let tracer = SdkTracerProvider::builder().build().tracer("trace-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
    });
}

/// The traceparent the handler ran in.
type Seen = Arc<Mutex<Option<String>>>;

/// The next service: notes its trace context, and sends the saga's next message.
async fn reserve(mut ctx: Context<'_>, _: serde_json::Value, seen: Seen) -> Result<(), BoxError> {
    *seen.lock().unwrap() = txoutbox::trace::current_traceparent();
    ctx.emit("StockReserved", "stock.reserved", &json!({ "sku": "A-1" }))
        .await?;
    Ok(())
}

/// The `traceparent` of each hop: the writer's row, the handler's span, the row the
/// handler wrote.
struct Hops {
    written: String,
    handled: String,
    sent_on: String,
}

/// A writer enqueues `ReserveStock` in a span of its own (with `traceparent` as its
/// explicit header, if given); a relay publishes it to an exchange of the test's own;
/// the next service's consumer handles it and emits `StockReserved`, which the relay
/// publishes on to a queue of the test's own.
async fn run_saga(pool: &PgPool, traceparent: Option<&str>) -> anyhow::Result<Hops> {
    install_tracing();
    let downstream = testkit::Sandbox::new("stock.reserved").await?;
    let queue = format!("test-trace-{}", uuid::Uuid::now_v7().simple());

    async {
        let mut builder = txoutbox::Message::builder("order-1", "ReserveStock", "stock.reserve");
        if let Some(traceparent) = traceparent {
            builder = builder.traceparent(traceparent);
        }
        txoutbox::enqueue(pool, &builder.payload(&json!({ "sku": "A-1" }))?).await
    }
    .instrument(tracing::info_span!("place_order"))
    .await?;

    let seen = Seen::default();
    let queues = ConsumerConfig::new(&queue).bind(&downstream.exchange, "stock.reserve");
    let consumer = Consumer::new(
        pool.clone(),
        testkit::amqp_url(),
        "inventory",
        queues.clone(),
    )
    .on_with("ReserveStock", Arc::clone(&seen), reserve)
    .spawn()?;
    let mut config = RelayConfig::default();
    config.exchange = downstream.exchange.clone();
    config.poll_interval = Duration::from_millis(50);
    // Sent rows stay, so that both rows can be read afterwards.
    config.retention = Some(Duration::from_secs(3600));
    let relay = Relay::new(pool.clone(), testkit::amqp_url(), config).spawn();

    let arrived = testkit::wait_until(
        Duration::from_secs(30),
        "the handler's message reaches the next queue",
        async || Ok(!downstream.received().is_empty()),
    )
    .await;
    consumer.shutdown().await?;
    relay.shutdown().await?;
    let connection =
        Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // The queue, its dead-letter queue and its retry queues.
    queues.delete(&channel).await?;
    connection.close(200, "test done".into()).await?;
    downstream.remove().await?;
    arrived?;

    let handled = seen.lock().unwrap().clone();
    Ok(Hops {
        written: row_traceparent(pool, "ReserveStock").await?,
        handled: handled.ok_or_else(|| anyhow::anyhow!("the handler ran outside any trace"))?,
        sent_on: row_traceparent(pool, "StockReserved").await?,
    })
}

async fn row_traceparent(pool: &PgPool, step: &str) -> anyhow::Result<String> {
    let traceparent: Option<String> =
        sqlx::query_scalar("SELECT headers ->> $1 FROM outbox WHERE step = $2")
            .bind(TRACEPARENT_HEADER)
            .bind(step)
            .fetch_one(pool)
            .await?;
    traceparent.ok_or_else(|| anyhow::anyhow!("the {step} row carries no traceparent"))
}

/// A traceparent's trace id and span id (its second and third fields).
fn ids(traceparent: &str) -> anyhow::Result<(&str, &str)> {
    match traceparent.split('-').collect::<Vec<_>>()[..] {
        ["00", trace_id, span_id, _] => Ok((trace_id, span_id)),
        _ => anyhow::bail!("not a traceparent: {traceparent:?}"),
    }
}

#[sqlx::test(migrator = "txoutbox_inbox::MIGRATOR")]
async fn one_trace_runs_from_the_writers_row_to_the_next_services_handler(
    pool: PgPool,
) -> TestResult {
    let hops = run_saga(&pool, None).await?;
    let (trace, writer_span) = ids(&hops.written)?;
    let (handler_trace, handler_span) = ids(&hops.handled)?;
    let (sent_on_trace, sent_on_span) = ids(&hops.sent_on)?;
    assert_eq!(
        handler_trace, trace,
        "the handler continues the writer's trace"
    );
    assert_ne!(
        handler_span, writer_span,
        "the handler's span is a child, not a copy"
    );
    assert_eq!(
        sent_on_trace, trace,
        "what the handler sends stays in the trace"
    );
    assert_eq!(
        sent_on_span, handler_span,
        "what the handler sends carries the handler's span, not the writer's"
    );
    Ok(())
}

#[sqlx::test(migrator = "txoutbox_inbox::MIGRATOR")]
async fn a_malformed_traceparent_is_ignored_and_the_handler_runs(pool: PgPool) -> TestResult {
    let hops = run_saga(&pool, Some("00-not-a-trace-01")).await?;
    assert_eq!(hops.written, "00-not-a-trace-01");
    // The handler ran, in a trace of its own, and what it sent carries that trace.
    let (handler_trace, handler_span) = ids(&hops.handled)?;
    assert_eq!(ids(&hops.sent_on)?, (handler_trace, handler_span));
    Ok(())
}
