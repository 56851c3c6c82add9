//! The shipped alert rules and dashboard against a real Prometheus that scrapes a
//! real relay, inbox consumer and saga orchestrator: every metric the rules and the
//! dashboard name must be scraped, so a renamed metric fails here, not at 2 a.m.
//! Skipped, with a note, where `prometheus` is not installed (`scripts/test.sh`
//! installs it); failed instead where `TXOUTBOX_REQUIRE_TOOLS` is set, as
//! `scripts/test.sh` sets it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use testkit::{Sandbox, amqp_url, body, http_get, serve_text, wait_until};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context};
use txoutbox_relay::{Relay, RelayConfig};
use txoutbox_saga::{Orchestrator, OrchestratorConfig, Registry, Saga};

static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The names of the series a PromQL text uses from this toolkit (and `up`).
fn metric_names(promql: &str, into: &mut BTreeSet<String>) {
    let mut word = String::new();
    for c in promql.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        // Only words with these prefixes (ours) and `up` are kept: label names, label
        // values and PromQL's functions and keywords have none of them.
        let ours = ["outbox_relay_", "inbox_", "saga_"];
        if ours.iter().any(|p| word.starts_with(p)) || word == "up" {
            into.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
}

/// Every metric the alert rules and the dashboard use.
fn used_metrics() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml"))?;
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            metric_names(expr, &mut names);
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        deploy().join("grafana/txoutbox.json"),
    )?)?;
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    anyhow::ensure!(exprs.len() > 20, "the dashboard's queries were not found");
    for expr in exprs {
        metric_names(&expr, &mut names);
    }
    // Label values of template variables query a metric too.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str() {
            metric_names(query, &mut names);
        }
    }
    Ok(names)
}

fn collect_exprs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => into.push(expr.clone()),
                    _ => collect_exprs(value, into),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_exprs(v, into)),
        _ => {}
    }
}

#[test]
fn the_rules_and_the_dashboard_name_metrics_of_every_part() -> TestResult {
    let names = used_metrics()?;
    for expected in [
        "outbox_relay_ready",
        "outbox_relay_oldest_unsent_age_seconds",
        "outbox_relay_broker_blocked",
        "outbox_relay_dead_rows",
        "inbox_dead_lettered_total",
        "inbox_connected",
        "saga_overdue",
        "saga_instances",
        "saga_waiting",
        "up",
    ] {
        anyhow::ensure!(names.contains(expected), "{expected} not in {names:?}");
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Job {
    n: i64,
}

async fn ignore(_: Context<'_>, _: Value) -> Result<(), BoxError> {
    Ok(())
}

/// A port nobody listens on now, for a server that must be told its port.
async fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn prometheus_scrapes_every_metric_the_rules_and_the_dashboard_use(
    pool: PgPool,
) -> TestResult {
    let installed = testkit::program_runs("prometheus");
    if !testkit::installed_or_skip("prometheus", installed, "scripts/tools.sh installs it")? {
        return Ok(());
    }
    let sandbox = Sandbox::new("#").await?;
    let stop = CancellationToken::new();

    // The relay, with its own /metrics, as the sidecar serves it.
    let mut relay_config = RelayConfig::default();
    relay_config.exchange = sandbox.exchange.clone();
    let relay = Relay::new(pool.clone(), amqp_url(), relay_config);
    let relay_listener = TcpListener::bind("127.0.0.1:0").await?;
    let relay_port = relay_listener.local_addr()?.port();
    tokio::spawn(txoutbox_relay::serve_http(
        relay_listener,
        relay.metrics(),
        pool.clone(),
        stop.clone(),
    ));
    let relay = relay.spawn();

    // A service with a consumer and an orchestrator, serving both on one /metrics.
    let unique = sandbox.exchange.clone();
    let consumer_config = ConsumerConfig::new(format!("{unique}-work")).bind(&unique, "work");
    let consumer = Consumer::new(pool.clone(), amqp_url(), "worker", consumer_config.clone())
        .on("Work", ignore)
        .spawn()?;
    // A saga that waits for an event, so that saga_waiting has a series.
    let saga = Saga::<Job>::define(format!("{unique}-job"), 1)
        .step("approve")
        .wait_for(format!("{unique}-approved"))
        .step("work")
        .action("work", |job| serde_json::json!({ "n": job.n }))
        .build()?;
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(&mut tx, &saga, "job-1", &Job { n: 1 }).await?;
    tx.commit().await?;
    let mut orchestrator_config = OrchestratorConfig::new(&unique);
    let replies_config = ConsumerConfig::new(format!("{unique}-replies"));
    orchestrator_config.consumer = replies_config.clone();
    let orchestrator = Orchestrator::new(
        pool.clone(),
        amqp_url(),
        Registry::new().register(saga),
        orchestrator_config,
    );
    let saga_metrics = orchestrator.metrics();
    let orchestrator = orchestrator.spawn()?;
    let (consumer_metrics, service_pool) = (consumer.metrics(), pool.clone());
    let service_listener = TcpListener::bind("127.0.0.1:0").await?;
    let service_port = service_listener.local_addr()?.port();
    let service = serve_text(service_listener, move || {
        let (consumer_metrics, saga_metrics) = (consumer_metrics.clone(), saga_metrics.clone());
        let pool = service_pool.clone();
        async move {
            let stats = txoutbox_saga::admin::stats(&pool)
                .await
                .expect("saga stats");
            consumer_metrics.render() + &saga_metrics.render_with(&stats)
        }
    });

    let dir = std::env::temp_dir().join(format!("txoutbox-prometheus-{unique}"));
    let outcome = scrape(&dir, relay_port, service_port).await;
    service.abort();
    orchestrator.shutdown().await?;
    consumer.shutdown().await?;
    relay.shutdown().await?;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    // The consumers' quorum queues, with their dead and retry queues: none outlives
    // the test (a broker fills up with them; see testkit's `broker_silent`).
    let channel = sandbox.channel().await?;
    consumer_config.delete(&channel).await?;
    replies_config.delete(&channel).await?;
    sandbox.remove().await?;
    outcome
}

/// Runs Prometheus over the two targets with the shipped rules, and checks what it
/// scraped and how it evaluates the rules.
async fn scrape(dir: &Path, relay_port: u16, service_port: u16) -> TestResult {
    std::fs::create_dir_all(dir)?;
    let rules = deploy().join("prometheus/alerts.yml").canonicalize()?;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: outbox-relay\n    static_configs:\n      - targets: ['127.0.0.1:{relay_port}']\n\
         \x20 - job_name: orders-service\n    static_configs:\n      - targets: ['127.0.0.1:{service_port}']\n",
        rules = rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config)?;
    let port = free_port().await?;
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    // Prometheus stopping on its own (its port taken since `free_port`, a bad
    // config) ends the check at once, with its log, not after the waits.
    let checked = tokio::select! {
        checked = check_scraped(port) => checked,
        exited = prometheus.wait() => Err(anyhow::anyhow!("prometheus stopped: {exited:?}")),
    };
    let _ = prometheus.kill().await;
    if checked.is_err() {
        let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        eprintln!("prometheus log:\n{log}");
    }
    checked
}

async fn check_scraped(port: u16) -> TestResult {
    let wanted = used_metrics()?;
    let scraped = async || -> anyhow::Result<BTreeSet<String>> {
        let Ok(response) = http_get(port, "/api/v1/label/__name__/values").await else {
            return Ok(BTreeSet::new());
        };
        let values: Value = serde_json::from_str(body(&response)).unwrap_or_default();
        Ok(values["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str().map(str::to_owned))
            .collect())
    };
    let all_there = wait_until(
        Duration::from_secs(60),
        "Prometheus has scraped every metric the rules and dashboard use",
        async || Ok(wanted.is_subset(&scraped().await?)),
    )
    .await;
    let have = scraped().await?;
    let missing: Vec<&String> = wanted.difference(&have).collect();
    anyhow::ensure!(all_there.is_ok(), "not scraped: {missing:?}");

    // The rules load and evaluate without error against the real series: once each
    // has been evaluated (`unknown` until then), each is `ok`.
    let rules = async || -> anyhow::Result<Vec<Value>> {
        let rules: Value = serde_json::from_str(body(&http_get(port, "/api/v1/rules").await?))?;
        Ok(rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    };
    wait_until(
        Duration::from_secs(30),
        "Prometheus has evaluated every rule",
        async || {
            let rules = rules().await?;
            Ok(!rules.is_empty() && rules.iter().all(|rule| rule["health"] != "unknown"))
        },
    )
    .await?;
    let rules = rules().await?;
    for rule in &rules {
        let (name, health) = (&rule["name"], &rule["health"]);
        anyhow::ensure!(health == "ok", "{name}: {health} {}", rule["lastError"]);
    }
    let loaded = rules.len();
    anyhow::ensure!(loaded >= 11, "only {loaded} rules loaded: {rules:?}");
    // The series the rules select with labels exist with those labels.
    for query in [
        "saga_instances{state=\"failed\"}",
        "inbox_connected{consumer=\"worker\"}",
        "up{job=\"outbox-relay\"}",
        "outbox_relay_ready{job=\"outbox-relay\"}",
    ] {
        let path = format!("/api/v1/query?query={}", encode(query));
        let answer: Value = serde_json::from_str(body(&http_get(port, &path).await?))?;
        let found = answer["data"]["result"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(found == 1, "{query}: {answer}");
    }
    Ok(())
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}
