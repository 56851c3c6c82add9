//! The fault proxy keeps its word: after a cut, nothing a stall held back reaches
//! the server, even when the stall ends right after the cut (as the consumer's
//! cut-between-commit-and-ack test does). Talks to a local TCP listener, no broker.

use std::time::Duration;

use testkit::FaultyProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Rounds of the race: with the cut looked at in random order, a round forwards
/// the held bytes about one time in three, so twenty rounds all but surely catch it.
const ROUNDS: usize = 20;

#[tokio::test(flavor = "current_thread")]
async fn bytes_held_by_a_stall_are_dropped_with_the_cut() -> anyhow::Result<()> {
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = FaultyProxy::start(server.local_addr()?).await?;
    for round in 0..ROUNDS {
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        let (mut upstream, _) = server.accept().await?;
        proxy.stall(true);
        client.write_all(b"ack").await?;
        // The pump reads the bytes and waits out the stall.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // This task and the pump wake in one turn of the timer, this task first (its
        // deadline is earlier): it cuts and ends the stall before the pump looks again.
        let wake = tokio::time::sleep(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(50));
        wake.await;
        proxy.cut_all();
        proxy.stall(false);
        let mut received = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), upstream.read_to_end(&mut received)).await;
        assert!(
            read.is_ok(),
            "round {round}: the cut did not close the server side"
        );
        assert!(
            received.is_empty(),
            "round {round}: {received:?} reached the server after the cut"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_switch_cuts_the_old_server_off_and_sends_new_connections_to_the_new_one()
-> anyhow::Result<()> {
    let old = TcpListener::bind("127.0.0.1:0").await?;
    let new = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = FaultyProxy::start(old.local_addr()?).await?;
    let mut before = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    let (mut on_old, _) = old.accept().await?;
    before.write_all(b"hi").await?;
    let mut buf = [0u8; 2];
    on_old.read_exact(&mut buf).await?;

    proxy.switch_to(new.local_addr()?);
    assert_eq!(proxy.upstream(), new.local_addr()?);
    let read = tokio::time::timeout(Duration::from_secs(10), before.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the old connection is cut: {read:?}"
    );
    let mut after = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    let (mut on_new, _) = tokio::time::timeout(Duration::from_secs(10), new.accept()).await??;
    after.write_all(b"yo").await?;
    on_new.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"yo");
    Ok(())
}
