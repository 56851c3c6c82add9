//! A cluster of the test's own forms from three nodes; a quorum queue on it has a
//! member on each, loses nothing when its leader's node stops while a publisher and a
//! consumer on the other nodes carry on, and a follower killed with -9 rejoins. The
//! local cluster of `scripts/rabbitmq-cluster.sh` starts, shows, survives a later
//! `RabbitNode::start` and stops. The machine's shared broker notices none of it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use testkit::{RabbitCluster, RabbitNode};

/// Messages published before the leader's node stops, and as many after.
const BATCH: u32 = 1_000;
/// How long a step may take: several times what it takes here.
const STEP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_quorum_queue_keeps_every_message_when_its_leader_stops_and_a_follower_dies()
-> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let shared = testkit::amqp_url();
    let shared_was_up = accepts(&shared).await;
    let mut took = Vec::new();

    let clock = Instant::now();
    let mut cluster = RabbitCluster::start("testkit-cluster", 3).await?;
    took.push(("cluster start (3 nodes)", clock.elapsed()));
    assert_eq!(cluster.running_nodes().await?, [0, 1, 2]);
    assert_eq!(cluster.amqp_urls().split(',').count(), 3);

    let queue = format!("test-qq-{}", uuid::Uuid::now_v7().simple());
    let first = Connection::connect(&cluster.node(0).amqp_url(), properties()).await?;
    declare_quorum(&first, &queue).await?;
    let declared = cluster.quorum_queue(&queue, "/").await?;
    assert_eq!(declared.members, [0, 1, 2], "{declared:?}");
    assert_eq!(declared.online, [0, 1, 2], "{declared:?}");

    let clock = Instant::now();
    publish(&first, &queue, 0..BATCH).await?;
    took.push(("publish 1,000 with confirms", clock.elapsed()));
    first.close(200, "OK".into()).await?;

    // A consumer and a publisher on the two nodes that go on, at work while the
    // leader's node stops.
    let leader = cluster
        .queue_leader(&queue, "/")
        .await?
        .expect("a new queue has a leader");
    let survivors: Vec<usize> = (0..3).filter(|&node| node != leader).collect();
    let consumer = tokio::spawn(consume(
        cluster.node(survivors[0]).amqp_url(),
        queue.clone(),
        2 * BATCH,
    ));
    let publisher = tokio::spawn(publish_steadily(
        cluster.node(survivors[1]).amqp_url(),
        queue.clone(),
        BATCH..2 * BATCH,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    anyhow::ensure!(!publisher.is_finished(), "the publisher was done too soon");

    let clock = Instant::now();
    cluster.node_mut(leader).stop().await?;
    took.push(("stop the leader's node", clock.elapsed()));
    let stopped = Instant::now();
    testkit::wait_until(STEP, "the queue has a new leader", async || {
        let new_leader = cluster.queue_leader(&queue, "/").await?;
        Ok(new_leader.is_some_and(|new| new != leader))
    })
    .await?;
    took.push((
        "stopped -> new leader shown (rabbitmqctl)",
        stopped.elapsed(),
    ));

    let longest = tokio::time::timeout(STEP, publisher).await???;
    took.push(("the longest confirm while it stopped", longest));
    let (received, duplicates) =
        tokio::time::timeout(STEP, consumer).await.map_err(|_| {
            anyhow::anyhow!("the consumer did not get every message within {STEP:?}")
        })???;
    assert_eq!(received, (0..2 * BATCH).collect::<HashSet<_>>());
    took.push(("stop -> all 2,000 consumed", clock.elapsed()));

    // The stopped node comes back, then a follower dies and comes back.
    let clock = Instant::now();
    cluster.node_mut(leader).start_again().await?;
    cluster.wait_until_running().await?;
    took.push(("the old leader's node rejoins", clock.elapsed()));
    let leader = cluster.queue_leader(&queue, "/").await?.expect("a leader");
    let follower = (0..3).find(|&node| node != leader).expect("two followers");
    cluster.node_mut(follower).kill().await?;
    assert!(
        !cluster.running_nodes().await?.contains(&follower),
        "a killed node still runs in the cluster"
    );
    let clock = Instant::now();
    cluster.node_mut(follower).start_again().await?;
    cluster.wait_until_running().await?;
    testkit::wait_until(
        STEP,
        "the queue's member on the killed node is back",
        async || Ok(cluster.quorum_queue(&queue, "/").await?.online == [0, 1, 2]),
    )
    .await?;
    took.push(("a killed follower rejoins", clock.elapsed()));

    let dirs: Vec<PathBuf> = cluster.nodes().iter().map(|n| n.dir().to_owned()).collect();
    let clock = Instant::now();
    cluster.remove().await?;
    took.push(("remove", clock.elapsed()));
    for dir in dirs {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    check_shared(&shared, shared_was_up).await;
    eprintln!("duplicates delivered during the failover: {duplicates}");
    for (step, time) in took {
        eprintln!("{step}: {time:.1?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_script_runs_a_cluster_that_outlives_it_and_the_sweep() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let shared = testkit::amqp_url();
    let shared_was_up = accepts(&shared).await;
    let dir = std::env::temp_dir().join(format!(
        "test-rabbitmq-cluster-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let script = Script {
        dir,
        port: free_port_run()?,
    };
    script.check().await?;
    drop(script);
    check_shared(&shared, shared_was_up).await;
    Ok(())
}

/// `scripts/rabbitmq-cluster.sh` on a cluster of the test's own (its own directory and
/// ports), running the binary cargo built for the test. Dropped, it stops the cluster
/// whatever happened: nothing else would, as its nodes outlive the test on purpose.
struct Script {
    dir: PathBuf,
    port: u16,
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.run("stop");
        let _ = std::fs::remove_file(self.dir.with_extension("lock"));
    }
}

impl Script {
    async fn check(&self) -> anyhow::Result<()> {
        let clock = Instant::now();
        let started = self.succeeds("start")?;
        eprintln!("script start: {:.1?}", clock.elapsed());
        let urls = stdout(&started);
        let urls: Vec<&str> = urls.trim().split(',').collect();
        assert_eq!(urls.len(), 3, "{urls:?}");
        for url in &urls {
            assert!(accepts(url).await, "{url} does not accept AMQP");
        }
        let again = self.succeeds("start")?;
        assert_eq!(stdout(&again), stdout(&started));
        assert!(stderr(&again).contains("already ran"), "{}", stderr(&again));
        let status = self.succeeds("status")?;
        assert_eq!(
            stdout(&status).matches("  running\n").count(),
            3,
            "{}",
            stdout(&status)
        );

        // Its starter is gone, yet the sweep of a later RabbitNode::start spares it.
        drop(RabbitNode::start("testkit-sweeper").await?);
        self.succeeds("status")?;

        let cluster = RabbitCluster::open(&self.dir)?.expect("the script's cluster");
        let pid_file = cluster.node(1).dir().join("pid");
        let vm = std::fs::read_to_string(&pid_file)?;
        assert!(
            Command::new("kill")
                .args(["-KILL", vm.trim()])
                .status()?
                .success()
        );
        testkit::wait_until(STEP, "the status shows a stopped node", async || {
            let status = self.run("status")?;
            Ok(status.status.code() == Some(3) && stdout(&status).contains("  stopped\n"))
        })
        .await?;
        let clock = Instant::now();
        let restarted = self.succeeds("start")?;
        eprintln!("script start of a killed node: {:.1?}", clock.elapsed());
        assert_eq!(stdout(&restarted), stdout(&started));
        self.succeeds("status")?;

        self.succeeds("stop")?;
        assert!(!self.dir.exists(), "{} is still there", self.dir.display());
        for url in &urls {
            assert!(!accepts(url).await, "{url} still accepts AMQP");
        }
        let status = self.run("status")?;
        assert_eq!(status.status.code(), Some(3), "{}", stdout(&status));
        self.succeeds("stop")?;
        Ok(())
    }

    fn run(&self, command: &str) -> anyhow::Result<Output> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh");
        Ok(Command::new(script)
            .arg(command)
            .env("RABBIT_CLUSTER_BIN", env!("CARGO_BIN_EXE_rabbitmq-cluster"))
            .env("RABBIT_CLUSTER_DIR", &self.dir)
            .env("RABBIT_CLUSTER_PORT", self.port.to_string())
            .output()?)
    }

    fn succeeds(&self, command: &str) -> anyhow::Result<Output> {
        let output = self.run(command)?;
        anyhow::ensure!(
            output.status.success(),
            "rabbitmq-cluster.sh {command}: {}\n{}{}",
            output.status,
            stdout(&output),
            stderr(&output)
        );
        Ok(output)
    }
}

/// A first AMQP port whose run of three, and the distribution ports 20000 above them,
/// are free: next to the script's own 5681-5683, where neither the machine's broker
/// nor a `RabbitNode` (which skips x5670-x5700) takes one.
fn free_port_run() -> anyhow::Result<u16> {
    (5684..=5695)
        .step_by(3)
        .find(|&first| {
            (first..first + 3)
                .flat_map(|port| [port, port + 20_000])
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no three free ports between 5684 and 5697"))
}

fn skipped() -> bool {
    let skip = !RabbitNode::installed();
    if skip {
        eprintln!(
            "skipped: rabbitmq-server is not installed (PATH, /usr/sbin, /usr/lib/rabbitmq/bin)"
        );
    }
    skip
}

fn properties() -> ConnectionProperties {
    ConnectionProperties::default()
}

async fn declare_quorum(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    channel.close(200, "OK".into()).await?;
    Ok(())
}

/// Publishes the numbers of `range` to `queue`, persistent, all at once, and waits
/// until the broker has confirmed every one.
async fn publish(
    connection: &Connection,
    queue: &str,
    range: std::ops::Range<u32>,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut confirms = Vec::new();
    for n in range {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = tokio::time::timeout(STEP, confirm).await??;
        anyhow::ensure!(
            matches!(confirmation, Confirmation::Ack(_)),
            "not confirmed: {confirmation:?}"
        );
    }
    channel.close(200, "OK".into()).await?;
    Ok(())
}

/// Publishes the numbers of `range` to `queue` through `url`, persistent, one at a
/// time, each confirmed before the next; returns the longest wait for a confirm.
async fn publish_steadily(
    url: String,
    queue: String,
    range: std::ops::Range<u32>,
) -> anyhow::Result<Duration> {
    let connection = Connection::connect(&url, properties()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut longest = Duration::ZERO;
    for n in range {
        let clock = Instant::now();
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        anyhow::ensure!(
            matches!(confirmation, Confirmation::Ack(_)),
            "{n} not confirmed: {confirmation:?}"
        );
        longest = longest.max(clock.elapsed());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    connection.close(200, "OK".into()).await?;
    Ok(longest)
}

/// Consumes `queue` through `url`, acking each message, until it has seen `count`
/// different numbers; returns them and how many came twice.
async fn consume(url: String, queue: String, count: u32) -> anyhow::Result<(HashSet<u32>, u32)> {
    let connection = Connection::connect(&url, properties()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (mut received, mut duplicates) = (HashSet::new(), 0);
    while received.len() < count as usize {
        let delivery = deliveries
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the consumer was cancelled"))??;
        let number: u32 = std::str::from_utf8(&delivery.data)?.parse()?;
        if !received.insert(number) {
            duplicates += 1;
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    connection.close(200, "OK".into()).await?;
    Ok((received, duplicates))
}

async fn accepts(url: &str) -> bool {
    match Connection::connect(url, properties()).await {
        Ok(connection) => connection.close(200, "OK".into()).await.is_ok(),
        Err(_) => false,
    }
}

async fn check_shared(shared: &str, was_up: bool) {
    if was_up {
        assert!(
            accepts(shared).await,
            "the shared broker ({shared}) no longer accepts connections"
        );
    } else {
        eprintln!("note: no shared broker at {shared} to check");
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
