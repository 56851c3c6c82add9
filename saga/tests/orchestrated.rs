//! Orchestrated sagas end to end on a real PostgreSQL and RabbitMQ: a relay publishes
//! the outbox, an orchestrator consumes replies and sweeps deadlines, participants
//! handle commands through their inbox. Each test has its own database, exchange and
//! queues.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use testkit::{Sandbox, amqp_url, header_text, take_headers, wait_until};
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, ConsumerHandle, Context};
use txoutbox_relay::{Relay, RelayConfig, RelayHandle};
use txoutbox_saga::participant::{SagaCommands, Verdict};
use txoutbox_saga::{
    Orchestrator, OrchestratorConfig, OrchestratorHandle, Registry, Saga, SagaState,
};

mod common;

use common::orders::{CREATE_EFFECTS, effect, effects};

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
    amount_cents: i64,
    #[serde(default)]
    charge: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct OrderCommand {
    order_id: i64,
    #[serde(default)]
    amount_cents: i64,
}

fn order_saga(charge_timeout: Duration) -> Saga<Order> {
    order_saga_timing(charge_timeout, Duration::from_secs(30))
}

fn order_saga_timing(charge_timeout: Duration, ship_timeout: Duration) -> Saga<Order> {
    let command =
        |o: &Order| serde_json::json!({ "order_id": o.order_id, "amount_cents": o.amount_cents });
    Saga::<Order>::define("order", 1)
        .compensation_attempts(3)
        .step("reserve_inventory")
        .action("inventory.reserve", command)
        .compensate("inventory.release", command)
        .step("charge_payment")
        .action("payment.charge", command)
        .compensate("payment.refund", command)
        .timeout(charge_timeout)
        .step("schedule_shipping")
        .action("shipping.schedule", command)
        .timeout(ship_timeout)
        .build()
        .expect("a valid definition")
}

async fn reserve(mut ctx: Context<'_>, cmd: OrderCommand) -> Result<Verdict<()>, BoxError> {
    effect(&mut ctx, cmd.order_id, "reserved").await?;
    Ok(Verdict::Done(()))
}

async fn release(mut ctx: Context<'_>, cmd: OrderCommand) -> Result<(), BoxError> {
    effect(&mut ctx, cmd.order_id, "released").await
}

/// Declines amounts over 1,000. Order 3's charge fails at every attempt it runs (a
/// transient error, retried after 1.5 s and more): only its step's timeout ends it,
/// whose refund fences the next retry. A charge that failed only once raced the
/// refund, and on a loaded machine its retry won (1 of 30 runs beside the demo).
async fn charge(
    mut ctx: Context<'_>,
    cmd: OrderCommand,
) -> Result<Verdict<serde_json::Value>, BoxError> {
    if cmd.order_id == 3 {
        return Err("card network unreachable".into());
    }
    if cmd.amount_cents > 1_000 {
        return Ok(Verdict::Declined("over the card limit".into()));
    }
    effect(&mut ctx, cmd.order_id, "charged").await?;
    Ok(Verdict::Done(
        serde_json::json!({ "charge": cmd.amount_cents }),
    ))
}

async fn refund(mut ctx: Context<'_>, cmd: OrderCommand) -> Result<(), BoxError> {
    effect(&mut ctx, cmd.order_id, "refunded").await
}

async fn schedule(mut ctx: Context<'_>, cmd: OrderCommand) -> Result<Verdict<()>, BoxError> {
    if cmd.order_id == 6 {
        return Err("the courier's system is down".into());
    }
    if cmd.order_id == 7 && ctx.envelope().attempt == 1 {
        return Err("the courier's system is slow today".into());
    }
    if cmd.order_id == 2 {
        return Ok(Verdict::Declined("no courier".into()));
    }
    effect(&mut ctx, cmd.order_id, "scheduled").await?;
    Ok(Verdict::Done(()))
}

/// The relay, participants and orchestrators of one test.
struct Services {
    sandbox: Sandbox,
    relay: RelayHandle,
    participants: ConsumerHandle,
    orchestrators: Vec<OrchestratorHandle>,
    /// The consumers' queues, to delete at the end.
    queues: Vec<ConsumerConfig>,
}

impl Services {
    async fn start(
        pool: &PgPool,
        orchestrators: usize,
        charge_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_with(pool, orchestrators, order_saga(charge_timeout)).await
    }

    async fn start_with(
        pool: &PgPool,
        orchestrators: usize,
        definition: Saga<Order>,
    ) -> anyhow::Result<Self> {
        sqlx::query(CREATE_EFFECTS).execute(pool).await?;
        let sandbox = Sandbox::new("#").await?;
        let mut relay_config = RelayConfig::default();
        relay_config.exchange = sandbox.exchange.clone();
        relay_config.poll_interval = Duration::from_millis(100);
        let relay = Relay::new(pool.clone(), amqp_url(), relay_config).spawn();

        let mut config = ConsumerConfig::new(format!("{}-participants", sandbox.queue));
        for pattern in ["inventory.*", "payment.*", "shipping.*"] {
            config = config.bind(&sandbox.exchange, pattern);
        }
        config.retry_base = Duration::from_millis(1500);
        let orchestrator_queue = ConsumerConfig::new(format!("{}-orchestrator", sandbox.queue));
        let queues = vec![config.clone(), orchestrator_queue.clone()];
        // Bound before anything is published: the sandbox's own queue takes every
        // message, so one published before a consumer's binding exists would be
        // routed there only, and lost to the consumer.
        let replies = orchestrator_queue.clone().bind(
            &sandbox.exchange,
            txoutbox_saga::wire::reply_routing_key(definition.name()),
        );
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        config.declare(&channel).await?;
        replies.declare(&channel).await?;
        let _ = connection.close(200, "declared".into()).await;
        let participants = Consumer::new(pool.clone(), amqp_url(), "participants", config)
            .action("inventory.reserve", reserve)
            .compensation("inventory.release", release)
            .action("payment.charge", charge)
            .compensation("payment.refund", refund)
            .action("shipping.schedule", schedule)
            .spawn()?;

        let registry = Registry::new().register(definition);
        let mut handles = Vec::new();
        for _ in 0..orchestrators {
            let mut config = OrchestratorConfig::new(&sandbox.exchange);
            config.consumer = orchestrator_queue.clone();
            config.sweep_interval = Duration::from_millis(100);
            let orchestrator =
                Orchestrator::new(pool.clone(), amqp_url(), registry.clone(), config);
            handles.push(orchestrator.spawn()?);
        }
        Ok(Self {
            sandbox,
            relay,
            participants,
            orchestrators: handles,
            queues,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        for orchestrator in self.orchestrators {
            orchestrator.shutdown().await?;
        }
        self.participants.shutdown().await?;
        self.relay.shutdown().await?;
        // The consumers' queues, their dead-letter and retry queues: none outlives the test.
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in &self.queues {
            queue.delete(&channel).await?;
        }
        let _ = connection.close(200, "test done".into()).await;
        self.sandbox.remove().await
    }
}

async fn start_order(
    pool: &PgPool,
    registry_saga: &Saga<Order>,
    order_id: i64,
    amount_cents: i64,
) -> anyhow::Result<String> {
    let saga_id = format!("order-{order_id}");
    let mut tx = pool.begin().await?;
    let order = Order {
        order_id,
        amount_cents,
        charge: None,
    };
    txoutbox_saga::start(&mut tx, registry_saga, &saga_id, &order).await?;
    tx.commit().await?;
    Ok(saga_id)
}

async fn state_of(pool: &PgPool, saga_id: &str) -> anyhow::Result<SagaState> {
    let state: String = sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_one(pool)
        .await?;
    Ok(SagaState::parse(&state).expect("a known state"))
}

async fn wait_for(pool: &PgPool, saga_id: &str, state: SagaState) -> anyhow::Result<()> {
    let reached = wait_until(
        Duration::from_secs(30),
        &format!("{saga_id} is {state}"),
        async || Ok(state_of(pool, saga_id).await? == state),
    )
    .await;
    if reached.is_err() {
        // Say where the saga stopped, for a failure that is hard to reproduce.
        let history: Vec<String> = sqlx::query_scalar(
            "SELECT occurred_at::text || ' ' || kind || ' ' || coalesce(detail, '') FROM saga_event
             WHERE saga_id = $1 ORDER BY id",
        )
        .bind(saga_id)
        .fetch_all(pool)
        .await?;
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state <> 'sent'")
            .fetch_one(pool)
            .await?;
        let outbox: Vec<String> = sqlx::query_scalar(
            "SELECT created_at::text || ' ' || step || ' -> ' || routing_key || ' ' || state
                    || ' attempts ' || attempts || ' ' || coalesce(last_error, '')
             FROM outbox WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(saga_id)
        .fetch_all(pool)
        .await?;
        let inbox: Vec<String> = sqlx::query_scalar(
            "SELECT processed_at::text || ' ' || consumer || ' took ' || step FROM inbox
             WHERE saga_id = $1 ORDER BY processed_at",
        )
        .bind(saga_id)
        .fetch_all(pool)
        .await?;
        eprintln!(
            "{saga_id}: {unsent} outbox rows unsent; history:\n  {}\noutbox rows kept:\n  {}\ninbox:\n  {}",
            history.join("\n  "),
            outbox.join("\n  "),
            inbox.join("\n  ")
        );
    }
    reached
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_order_runs_every_step_once_and_completes(pool: PgPool) -> TestResult {
    let services = Services::start(&pool, 1, Duration::from_secs(30)).await?;
    let saga_id = start_order(&pool, &order_saga(Duration::from_secs(30)), 1, 500).await?;
    wait_for(&pool, &saga_id, SagaState::Completed).await?;
    assert_eq!(
        effects(&pool, 1).await?,
        ["reserved", "charged", "scheduled"]
    );
    let data: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM saga_instance WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        data["charge"], 500,
        "the charge's result merged into the saga"
    );
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_declined_step_compensates_the_completed_ones_once_in_reverse(
    pool: PgPool,
) -> TestResult {
    let services = Services::start(&pool, 1, Duration::from_secs(30)).await?;
    let definition = order_saga(Duration::from_secs(30));
    // Order 2's shipping is declined: refund, then release.
    let declined_late = start_order(&pool, &definition, 2, 500).await?;
    // Order 4's charge is declined: only the release.
    let declined_early = start_order(&pool, &definition, 4, 5_000).await?;
    wait_for(&pool, &declined_late, SagaState::Compensated).await?;
    wait_for(&pool, &declined_early, SagaState::Compensated).await?;
    assert_eq!(
        effects(&pool, 2).await?,
        ["reserved", "charged", "refunded", "released"]
    );
    assert_eq!(effects(&pool, 4).await?, ["reserved", "released"]);
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_timed_out_step_is_compensated_and_its_late_action_is_fenced(pool: PgPool) -> TestResult {
    // The charge fails until the refund fences it; its step times out after 0.5 s.
    let timeout = Duration::from_millis(500);
    let services = Services::start(&pool, 1, timeout).await?;
    let saga_id = start_order(&pool, &order_saga(timeout), 3, 500).await?;
    wait_for(&pool, &saga_id, SagaState::Compensated).await?;
    // The charge's retry comes after the refund: fenced, it is answered with a failure
    // that the orchestrator records and ignores.
    let history = async || -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT kind || ':' || coalesce(detail, '') FROM saga_event WHERE saga_id = $1 ORDER BY id",
        )
        .bind(&saga_id)
        .fetch_all(&pool)
        .await?)
    };
    let late_reply_ignored = async || -> anyhow::Result<bool> {
        Ok(history()
            .await?
            .iter()
            .any(|h| h.contains("fenced: its compensation came first") && h.contains("ignored")))
    };
    wait_until(
        Duration::from_secs(20),
        "the late charge's reply is recorded",
        late_reply_ignored,
    )
    .await?;
    assert_eq!(
        effects(&pool, 3).await?,
        ["reserved", "released"],
        "no charge, no refund"
    );
    let history = history().await?;
    assert!(
        history.iter().any(|h| h.starts_with("timeout")),
        "{history:?}"
    );
    assert_eq!(state_of(&pool, &saga_id).await?, SagaState::Compensated);
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sagas_finish_on_the_other_orchestrator_when_one_is_killed(pool: PgPool) -> TestResult {
    let mut services = Services::start(&pool, 2, Duration::from_secs(30)).await?;
    let definition = order_saga(Duration::from_secs(30));
    let mut ids = Vec::new();
    for order_id in 100..140 {
        ids.push(start_order(&pool, &definition, order_id, 500).await?);
        if order_id == 110 {
            services.orchestrators.remove(0).abort();
        }
    }
    for saga_id in &ids {
        wait_for(&pool, saga_id, SagaState::Completed).await?;
    }
    for order_id in 100..140 {
        assert_eq!(
            effects(&pool, order_id).await?,
            ["reserved", "charged", "scheduled"],
            "order {order_id}"
        );
    }
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_duplicate_reply_delivered_twice_at_once_applies_once(pool: PgPool) -> TestResult {
    let services = Services::start(&pool, 2, Duration::from_secs(30)).await?;
    let saga_id = start_order(&pool, &order_saga(Duration::from_secs(30)), 5, 500).await?;
    wait_for(&pool, &saga_id, SagaState::Completed).await?;
    let events_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saga_event WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    // The shipping reply again, twice in one statement, through the outbox: two
    // orchestrators may take the copies at the same moment.
    let shipping_reply: String = sqlx::query_scalar(
        "SELECT step FROM inbox WHERE consumer = 'saga-orchestrator' AND saga_id = $1 AND step LIKE 'shipping.schedule.reply#%'",
    )
    .bind(&saga_id)
    .fetch_one(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload)
         SELECT $1, $2, 'saga.order.reply', '{\"succeeded\": true}' FROM generate_series(1, 2)",
    )
    .bind(&saga_id)
    .bind(&shipping_reply)
    .execute(&pool)
    .await?;
    let duplicates = async || -> anyhow::Result<bool> {
        let counted: i32 = sqlx::query_scalar(
            "SELECT duplicates FROM inbox WHERE consumer = 'saga-orchestrator' AND saga_id = $1 AND step = $2",
        )
        .bind(&saga_id)
        .bind(&shipping_reply)
        .fetch_one(&pool)
        .await?;
        Ok(counted == 2)
    };
    wait_until(
        Duration::from_secs(20),
        "both copies were seen as duplicates",
        duplicates,
    )
    .await?;
    let events_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saga_event WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        events_before, events_after,
        "a duplicate reply leaves no trace in the saga"
    );
    assert_eq!(state_of(&pool, &saga_id).await?, SagaState::Completed);
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_operator_aborts_a_running_saga_while_orchestrators_run(pool: PgPool) -> TestResult {
    let services = Services::start(&pool, 2, Duration::from_secs(30)).await?;
    // Order 6's shipping keeps failing: the saga waits at its last step.
    let saga_id = start_order(&pool, &order_saga(Duration::from_secs(30)), 6, 500).await?;
    let waiting_to_ship = async || -> anyhow::Result<bool> {
        Ok(effects(&pool, 6).await? == ["reserved", "charged"])
    };
    wait_until(
        Duration::from_secs(20),
        "order 6 is charged",
        waiting_to_ship,
    )
    .await?;
    txoutbox_saga::admin::request_abort(&pool, &saga_id, "customer called").await?;
    wait_for(&pool, &saga_id, SagaState::Compensated).await?;
    assert_eq!(
        effects(&pool, 6).await?,
        ["reserved", "charged", "refunded", "released"]
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM saga_instance WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert!(reason.unwrap_or_default().contains("customer called"));
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_reply_for_an_unknown_saga_is_dead_lettered_at_once_with_its_reason(
    pool: PgPool,
) -> TestResult {
    let services = Services::start(&pool, 1, Duration::from_secs(30)).await?;
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload)
         VALUES ('order-404', 'inventory.reserve.reply#x', 'saga.order.reply', '{\"succeeded\": true}')",
    )
    .execute(&pool)
    .await?;
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let orchestrator_queue = &services.queues[1];
    let dead = txoutbox::wire::dead_queue(&orchestrator_queue.queue);
    // Declared the way the orchestrator's consumer declares it, in case it has not yet.
    orchestrator_queue.declare(&channel).await?;
    let dead_letters = take_headers(&channel, &dead, 1, Duration::from_secs(20)).await?;
    let headers = &dead_letters[0];
    let reason = header_text(headers, txoutbox::wire::DEAD_REASON_HEADER);
    assert_eq!(reason, "rejected: no saga with id order-404");
    let attempts = headers.inner().get(txoutbox::wire::ATTEMPTS_HEADER);
    assert_eq!(
        attempts,
        Some(&lapin::types::AMQPValue::LongLongInt(1)),
        "dead at its first attempt"
    );
    let _ = connection.close(200, "test done".into()).await;
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_timed_out_step_without_a_compensation_is_cancelled_and_never_takes_effect(
    pool: PgPool,
) -> TestResult {
    // Order 7's shipping fails once and is retried after 1.5 s; its step times out
    // after 0.5 s. Shipping cannot be undone, so the orchestrator cancels it rather
    // than refund and release while a shipment may still go out.
    let definition = || order_saga_timing(Duration::from_secs(30), Duration::from_millis(500));
    let services = Services::start_with(&pool, 1, definition()).await?;
    let saga_id = start_order(&pool, &definition(), 7, 500).await?;
    wait_for(&pool, &saga_id, SagaState::Compensated).await?;
    // The retried shipment finds its cancel's fence and is answered, not run.
    let retried = async || -> anyhow::Result<bool> {
        let deliveries: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE consumer = 'participants' AND saga_id = $1
             AND step LIKE 'shipping.schedule#%'",
        )
        .bind(&saga_id)
        .fetch_one(&pool)
        .await?;
        Ok(deliveries == 1)
    };
    wait_until(
        Duration::from_secs(20),
        "the shipment's retry is answered",
        retried,
    )
    .await?;
    assert_eq!(
        effects(&pool, 7).await?,
        ["reserved", "charged", "refunded", "released"],
        "never shipped, and everything before it undone"
    );
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT kind || ' ' || coalesce(phase, '-') FROM saga_event
         WHERE saga_id = $1 AND kind IN ('timeout', 'command_sent') ORDER BY id",
    )
    .bind(&saga_id)
    .fetch_all(&pool)
    .await?;
    // The three actions, then the cancel after the timeout: sent again (after twice
    // the wait) each time its answer takes longer than the step's 0.5 s, as it may on a
    // loaded machine (1 of 30 runs beside the demo); then both compensations.
    let (cancels, compensations) = events[3..].split_at(events.len().saturating_sub(5));
    assert!(
        !cancels.is_empty()
            && cancels
                .chunks(2)
                .all(|pair| pair == ["timeout action", "command_sent cancel"]),
        "{events:?}"
    );
    assert_eq!(
        compensations,
        ["command_sent compensation", "command_sent compensation"],
        "{events:?}"
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM saga_instance WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert!(reason.unwrap_or_default().contains("timed out"));
    services.stop().await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_action_that_arrives_after_its_deadline_is_answered_and_not_run(
    pool: PgPool,
) -> TestResult {
    let services = Services::start(&pool, 1, Duration::from_secs(30)).await?;
    // A charge whose deadline passed five seconds ago, as a stalled relay or a
    // participant that was down would deliver it.
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        - 5_000;
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload, headers)
         VALUES ('order-9', 'payment.charge#late', 'payment.charge',
                 '{\"order_id\": 9, \"amount_cents\": 500}',
                 jsonb_build_object('x-saga-reply-to', 'saga.order.reply', 'x-saga-deadline', $1::text))",
    )
    .bind(deadline.to_string())
    .execute(&pool)
    .await?;
    let answered = async || -> anyhow::Result<bool> {
        let reason: Option<Option<String>> = sqlx::query_scalar(
            "SELECT result->>'reason' FROM inbox
             WHERE consumer = 'participants' AND saga_id = 'order-9' AND step = 'payment.charge'",
        )
        .fetch_optional(&pool)
        .await?;
        Ok(reason
            .flatten()
            .is_some_and(|r| r.contains("after its deadline")))
    };
    wait_until(
        Duration::from_secs(20),
        "the late charge is answered",
        answered,
    )
    .await?;
    assert!(effects(&pool, 9).await?.is_empty(), "the late charge ran");
    services.stop().await
}
