//! One service of the saga as its own process: an idempotent consumer of the events
//! it listens to, whose handlers change the service's tables and enqueue the next
//! event through the outbox, all in the inbox's transaction. The order service also
//! places the orders.

mod common;
mod inventory;
mod messages;
mod order;
mod payment;
mod shipping;

use idempotency::Consumer;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use super::cli::ServiceArgs;
use super::policy::PaymentPolicy;
use super::saga::{Event, Service, consumer_config};

/// Runs one service until SIGTERM or Ctrl-C.
pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let database_url =
        std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("DATABASE_URL is not set"))?;
    let amqp_url = std::env::var("AMQP_URL").map_err(|_| anyhow::anyhow!("AMQP_URL is not set"))?;
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect(&database_url)
        .await?;

    let config = consumer_config(&args.prefix, args.service);
    config.validate()?;
    let consumer = handlers(
        Consumer::new(pool.clone(), amqp_url, args.service.name(), config),
        &args,
    );

    let shutdown = CancellationToken::new();
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));
    let placing = (args.service == Service::Order).then(|| {
        tokio::spawn(order::place_orders(
            pool.clone(),
            args.orders,
            args.order_rate,
            shutdown.clone(),
        ))
    });
    tracing::info!(service = %args.service, "running");

    stop_signal().await;
    tracing::info!(service = %args.service, "stopping");
    shutdown.cancel();
    if let Some(placing) = placing {
        placing.await??;
    }
    consuming.await??;
    Ok(())
}

fn handlers(consumer: Consumer, args: &ServiceArgs) -> Consumer {
    match args.service {
        Service::Order => consumer
            .on(Event::ShipmentCreated.step(), order::shipment_created)
            .on(Event::InventoryReleased.step(), order::inventory_released),
        Service::Inventory => consumer
            .on(Event::OrderCreated.step(), inventory::order_created)
            .on(Event::PaymentFailed.step(), inventory::payment_failed),
        Service::Payment => {
            let policy = PaymentPolicy {
                seed: args.seed,
                failure_rate: args.payment_failure_rate,
            };
            consumer.on_with(
                Event::InventoryReserved.step(),
                policy,
                payment::inventory_reserved,
            )
        }
        Service::Shipping => consumer.on(Event::PaymentCharged.step(), shipping::payment_charged),
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
