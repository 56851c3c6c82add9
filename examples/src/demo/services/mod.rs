//! One service of the saga as its own process: an idempotent consumer of the events
//! it listens to (choreography) or the commands it is sent (orchestration), whose
//! handlers change the service's tables and enqueue the next message through the
//! outbox, all in the inbox's transaction. The order service also places the orders,
//! and under orchestration hosts the saga's orchestrator.

mod common;
mod inventory;
mod messages;
mod order;
mod participants;
mod payment;
mod shipping;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{Consumer, WithState};
use txoutbox_saga::participant::SagaCommands;
use txoutbox_saga::{Orchestrator, OrchestratorConfig, OrchestratorHandle, Registry};

use self::common::Compensations;
use self::order::Announce;
use super::cli::ServiceArgs;
use super::orchestration::{self, command};
use super::policy::{CompensationPolicy, PaymentPolicy};
use super::saga::{Event, SagaMode, Service, consumer_config};

/// Runs one service until SIGTERM or Ctrl-C.
pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let database_url =
        std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("DATABASE_URL is not set"))?;
    let amqp_url = std::env::var("AMQP_URL").map_err(|_| anyhow::anyhow!("AMQP_URL is not set"))?;
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect(&database_url)
        .await?;

    let config = consumer_config(&args.prefix, args.service, args.saga);
    config.validate()?;
    let consumer = Consumer::new(pool.clone(), amqp_url.clone(), args.service.name(), config);
    let compensations = Compensations {
        policy: CompensationPolicy {
            seed: args.seed,
            failure_rate: args.compensation_failure_rate,
        },
        pool: pool.clone(),
    };
    let definition = Arc::new(orchestration::definition(Duration::from_millis(
        args.step_timeout_ms,
    )));

    let shutdown = CancellationToken::new();
    let mut orchestrator = None;
    let consuming = match (args.saga, args.service) {
        (SagaMode::Choreography, _) => {
            let consumer = choreography_handlers(consumer, &args, compensations);
            Some(tokio::spawn(consumer.run(shutdown.clone())))
        }
        (SagaMode::Orchestration, Service::Order) => {
            orchestrator = Some(orchestrate(&pool, amqp_url, &args, &definition)?);
            None
        }
        (SagaMode::Orchestration, _) => {
            let consumer = participant_handlers(consumer, &args, compensations);
            Some(tokio::spawn(consumer.run(shutdown.clone())))
        }
    };
    let announce = match args.saga {
        SagaMode::Choreography => Announce::Event,
        SagaMode::Orchestration => Announce::Saga(definition),
    };
    let placing = (args.service == Service::Order && args.orders > 0).then(|| {
        tokio::spawn(order::place_orders(
            pool.clone(),
            args.orders,
            args.order_rate,
            announce,
            shutdown.clone(),
        ))
    });
    tracing::info!(service = %args.service, saga = %args.saga, "running");

    stop_signal().await;
    tracing::info!(service = %args.service, "stopping");
    shutdown.cancel();
    if let Some(placing) = placing {
        placing.await??;
    }
    if let Some(orchestrator) = orchestrator {
        orchestrator.shutdown().await?;
    }
    if let Some(consuming) = consuming {
        consuming.await??;
    }
    Ok(())
}

fn choreography_handlers(
    consumer: Consumer,
    args: &ServiceArgs,
    compensations: Compensations,
) -> Consumer {
    match args.service {
        Service::Order => consumer
            .on(Event::ShipmentCreated.step(), order::shipment_created)
            .on(Event::InventoryReleased.step(), order::inventory_released),
        Service::Inventory => consumer
            .on(Event::OrderCreated.step(), inventory::order_created)
            .on_with(
                Event::PaymentFailed.step(),
                compensations,
                inventory::payment_failed,
            ),
        Service::Payment => consumer.on_with(
            Event::InventoryReserved.step(),
            payment_policy(args),
            payment::inventory_reserved,
        ),
        Service::Shipping => consumer.on(Event::PaymentCharged.step(), shipping::payment_charged),
    }
}

fn participant_handlers(
    consumer: Consumer,
    args: &ServiceArgs,
    compensations: Compensations,
) -> Consumer {
    match args.service {
        Service::Inventory => consumer
            .action(command::RESERVE, participants::reserve)
            .compensation(
                command::RELEASE,
                WithState::new(participants::release, compensations),
            ),
        Service::Payment => consumer
            .action(
                command::CHARGE,
                WithState::new(participants::charge, payment_policy(args)),
            )
            .compensation(
                command::REFUND,
                WithState::new(participants::refund, compensations),
            ),
        Service::Shipping => consumer.action(command::SHIP, participants::ship),
        Service::Order => consumer,
    }
}

/// The order service's orchestrator: replies from its queue, deadlines swept every
/// 250 ms. Every order process runs one; they share the queue and the saga rows.
fn orchestrate(
    pool: &PgPool,
    amqp_url: String,
    args: &ServiceArgs,
    definition: &txoutbox_saga::Saga<orchestration::OrderSaga>,
) -> anyhow::Result<OrchestratorHandle> {
    let mut config = OrchestratorConfig::new(&args.prefix);
    config.consumer = consumer_config(&args.prefix, Service::Order, SagaMode::Orchestration);
    config.inbox = Service::Order.name().to_owned();
    config.sweep_interval = Duration::from_millis(250);
    let registry = Registry::new().register(definition.clone());
    Ok(Orchestrator::new(pool.clone(), amqp_url, registry, config).spawn()?)
}

fn payment_policy(args: &ServiceArgs) -> PaymentPolicy {
    PaymentPolicy {
        seed: args.seed,
        failure_rate: args.payment_failure_rate,
    }
}

async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
