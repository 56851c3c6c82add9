//! Several RabbitMQ nodes in `AMQP_URL`: a node that is not there is skipped, a lost
//! node is left for the next one, and a black-holed one is given up after the connect
//! timeout. Two `FaultyProxy`s in front of the one broker are two nodes of a cluster.

use std::process::Stdio;
use std::time::Duration;

use lapin::uri::AMQPUri;
use sqlx::PgPool;
use tokio::io::AsyncReadExt;
use txoutbox::url::redact;
use txoutbox_relay::{Metrics, Relay};

use crate::support::*;

/// The broker of `AMQP_URL` on port 1, where nothing listens: a node that is down.
fn dead_node() -> anyhow::Result<String> {
    let mut uri: AMQPUri = amqp_url().parse().map_err(anyhow::Error::msg)?;
    uri.authority.port = 1;
    Ok(uri.to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_node(metrics: &Metrics, node: &str) -> anyhow::Result<()> {
    let what = format!("the relay is connected to {node}");
    wait_until(Duration::from_secs(15), &what, async || {
        Ok(metrics.broker_node().as_deref() == Some(node))
    })
    .await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_dead_first_node_is_skipped_and_readyz_names_the_live_one(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let (dead, live) = (dead_node()?, amqp_url());
    let port = free_port()?;
    let mut relay = relay_command(
        &database_url_of(&pool),
        &format!("{dead},{live}"),
        &sandbox.exchange,
        &format!("127.0.0.1:{port}"),
    )
    .env("RUST_LOG", "info")
    .stderr(Stdio::piped())
    .spawn()?;
    let mut stderr = relay.stderr.take().expect("piped");
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let ids = fill(&pool, 5, 20, "skip").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(20)).await?;
    let readyz = http_get(port, "/readyz").await?;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(
        readyz.ends_with(&format!("\r\n\r\nready: RabbitMQ node {}\n", redact(&live))),
        "/readyz names the node: {readyz}"
    );
    let password = live.parse::<AMQPUri>().map_err(anyhow::Error::msg)?;
    let password = format!(":{}@", password.authority.userinfo.password);
    assert!(!readyz.contains(&password), "a password leaked: {readyz}");

    assert!(stop(&mut relay, Duration::from_secs(10)).await?.success());
    let logs = logs.await?;
    assert!(
        logs.contains("could not connect to the broker node; trying the next"),
        "{logs}"
    );
    let connected = logs
        .lines()
        .find(|line| line.contains("connected to the broker"))
        .unwrap_or_default();
    assert!(connected.contains(&redact(&live)), "{logs}");
    assert!(!logs.contains(&password), "a password leaked: {logs}");
    wait_until_drained(&pool, Duration::from_secs(5)).await?;
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_lost_node_is_left_for_the_next_and_every_row_arrives_in_order(
    pool: PgPool,
) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let (a, b) = (
        FaultyProxy::to_broker().await?,
        FaultyProxy::to_broker().await?,
    );
    let mut ids = fill(&pool, 50, 200, "failover").await?;
    let relay = Relay::new(
        pool.clone(),
        format!("{},{}", a.amqp_url(), b.amqp_url()),
        fast_config(&sandbox.exchange),
    );
    let metrics = relay.metrics();
    let relay = relay.spawn();
    sandbox
        .wait_for_count(1000, Duration::from_secs(30))
        .await?;
    assert_eq!(metrics.broker_node(), Some(redact(&a.amqp_url())));

    // Node A goes away under load: its connections drop and new ones are refused.
    a.refuse(true);
    a.cut_all();
    wait_for_node(&metrics, &redact(&b.amqp_url())).await?;
    // Writers go on meanwhile.
    ids.extend(fill(&pool, 50, 20, "failover").await?);

    // A comes back and B goes away: the relay wraps around to A.
    sandbox
        .wait_for_count(6000, Duration::from_secs(30))
        .await?;
    a.refuse(false);
    b.refuse(true);
    b.cut_all();
    wait_for_node(&metrics, &redact(&a.amqp_url())).await?;

    sandbox.wait_for_all(&ids, Duration::from_secs(30)).await?;
    wait_until_drained(&pool, Duration::from_secs(10)).await?;
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_black_holed_node_is_given_up_after_the_connect_timeout(pool: PgPool) -> TestResult {
    let sandbox = Sandbox::new("#").await?;
    let (a, b) = (
        FaultyProxy::to_broker().await?,
        FaultyProxy::to_broker().await?,
    );
    a.stall(true); // accepts, then never answers
    let relay = Relay::new(
        pool.clone(),
        format!("{},{}", a.amqp_url(), b.amqp_url()),
        fast_config(&sandbox.exchange), // connect timeout: the 2 s confirm timeout
    );
    let metrics = relay.metrics();
    let relay = relay.spawn();
    let ids = fill(&pool, 5, 20, "blackhole").await?;
    sandbox.wait_for_all(&ids, Duration::from_secs(15)).await?;
    assert_eq!(metrics.broker_node(), Some(redact(&b.amqp_url())));
    relay.shutdown().await?;
    assert_order_per_key(&sandbox.received());
    sandbox.remove().await
}
