//! One clear line, and an end to the test binary, when a server the tests need is down:
//! what the README asks a newcomer to start, and how, instead of a panic per test.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Deref;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::migrate::Migrator;

use crate::servers::{self, AMQP_PORT, POSTGRES_PORT};

/// How long a server may take to accept a TCP connection before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long RabbitMQ may take to answer the first bytes of AMQP.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an AMQP 0-9-1 client sends first; the broker answers with `connection.start`.
const AMQP_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// Makes sure PostgreSQL (`DATABASE_URL`) and RabbitMQ (`AMQP_URL`) accept connections.
///
/// The first call in a process checks; later calls return at once. If a server is
/// down, it writes one line naming it and how to start it, past the test harness's
/// output capture, and ends the process with exit code 1: every test of the binary
/// would fail the same way, so none runs. A server reached through a Unix socket is not
/// checked.
pub fn require_servers() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if let Some(line) = servers_down().or_else(broker_silent) {
            // Straight to stderr: `eprintln!` in a test is captured and shown only per test.
            let _ = writeln!(std::io::stderr(), "{line}");
            // Inside the initialiser, so callers on other threads wait here and only
            // this one exits.
            std::process::exit(1);
        }
    });
}

/// The line to print when a server is down, or `None` when both answer.
fn servers_down() -> Option<String> {
    let checks = [
        (
            "PostgreSQL",
            "DATABASE_URL",
            servers::database_url(),
            POSTGRES_PORT,
        ),
        ("RabbitMQ", "AMQP_URL", servers::amqp_url(), AMQP_PORT),
    ];
    let down: Vec<Down> = checks
        .into_iter()
        .filter_map(|(server, variable, url, port)| {
            let address = servers::address(&url, port)?;
            (!accepts(&address)).then_some((server, variable, address))
        })
        .collect();
    line(&down)
}

/// A server that is down: its name, the variable that names it, its `host:port`.
type Down = (&'static str, &'static str, String);

/// The one line that says which servers are down and how to start them.
fn line(down: &[Down]) -> Option<String> {
    match down {
        [] => None,
        [(server, variable, address)] => Some(format!(
            "{server} is not reachable at {address} ({variable}): start it with \
             scripts/services.sh, or set {variable} to a running server"
        )),
        _ => Some(format!(
            "{}: start them with scripts/services.sh",
            down.iter()
                .map(|(server, variable, address)| format!(
                    "{server} is not reachable at {address} ({variable})"
                ))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

/// The line to print when RabbitMQ takes connections but does not answer them, which
/// would otherwise hang every test that connects. RabbitMQ 3.10 (Debian 12's) does this
/// once its file handle budget is spent: each quorum queue reserves three handles, so
/// with the default limit of 1024 open files some 300 quorum queues (tests' leftovers,
/// say) are enough.
/// Only a plain `amqp://` broker is asked: one behind TLS (`amqps://`) would wait for
/// a TLS greeting, not answer the AMQP header.
fn broker_silent() -> Option<String> {
    let url = servers::amqp_url();
    if !url.starts_with("amqp://") {
        return None;
    }
    let address = servers::address(&url, AMQP_PORT)?;
    (!answers_amqp(&address)).then(|| {
        format!(
            "RabbitMQ at {address} (AMQP_URL) takes connections but did not answer in \
             {ANSWER_TIMEOUT:?}: a broker out of file handles does this; see \
             docs/operations/troubleshooting.md#the-broker-takes-connections-and-never-answers"
        )
    })
}

/// Whether the server at `address` answers the AMQP protocol header with anything.
fn answers_amqp(address: &str) -> bool {
    let Ok(candidates) = address.to_socket_addrs() else {
        return false;
    };
    candidates.into_iter().any(|addr| {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
            return false;
        };
        let mut first = [0u8; 1];
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).is_ok()
            && stream.write_all(AMQP_HEADER).is_ok()
            && matches!(stream.read(&mut first), Ok(1))
    })
}

/// Whether something accepts a TCP connection at `address` (`host:port`).
fn accepts(address: &str) -> bool {
    let Ok(candidates) = address.to_socket_addrs() else {
        return false;
    };
    candidates
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok())
}

/// A migrator for `#[sqlx::test(migrator = "...")]` that first calls
/// [`require_servers`], then [`crate::capture_logs`]: the test's logs are shown when it
/// fails.
///
/// `#[sqlx::test]` connects to `DATABASE_URL` before the test body runs, and a refused
/// connection makes it retry for 30 seconds and then panic, in every test. It reads its
/// migrator before connecting, so a migrator that checks the servers turns that into the
/// one line of [`require_servers`]:
///
/// ```rust,no_run
/// # mod txoutbox { pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT; }
/// static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);
///
/// #[sqlx::test(migrator = "MIGRATOR")]
/// async fn publishes(pool: sqlx::PgPool) -> anyhow::Result<()> {
///     Ok(())
/// }
/// ```
pub struct CheckedMigrator(&'static Migrator);

impl CheckedMigrator {
    /// Wraps `migrator`.
    pub const fn new(migrator: &'static Migrator) -> Self {
        Self(migrator)
    }
}

impl Deref for CheckedMigrator {
    type Target = Migrator;

    fn deref(&self) -> &Migrator {
        require_servers();
        crate::capture_logs();
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_names_the_servers_that_are_down() {
        assert_eq!(line(&[]), None);
        let rabbit = ("RabbitMQ", "AMQP_URL", "127.0.0.1:1".to_owned());
        assert_eq!(
            line(std::slice::from_ref(&rabbit)).as_deref(),
            Some(
                "RabbitMQ is not reachable at 127.0.0.1:1 (AMQP_URL): start it with \
                 scripts/services.sh, or set AMQP_URL to a running server"
            )
        );
        let postgres = ("PostgreSQL", "DATABASE_URL", "db:5432".to_owned());
        let both = line(&[postgres, rabbit]).unwrap();
        assert!(!both.contains('\n'), "{both}");
        assert!(
            both.contains("db:5432 (DATABASE_URL) and RabbitMQ"),
            "{both}"
        );
    }

    #[test]
    fn a_server_that_takes_connections_and_says_nothing_does_not_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // Accepted by the kernel's backlog, never read or answered.
        let started = std::time::Instant::now();
        assert!(!answers_amqp(&address));
        assert!(started.elapsed() >= ANSWER_TIMEOUT);
        drop(listener);
    }

    #[test]
    fn a_server_that_answers_the_header_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let answering = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut header = [0u8; 8];
            stream.read_exact(&mut header).unwrap();
            assert_eq!(&header, AMQP_HEADER);
            stream.write_all(&[1, 0, 0]).unwrap();
        });
        assert!(answers_amqp(&address));
        answering.join().unwrap();
    }

    #[test]
    fn a_closed_port_does_not_accept() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert!(accepts(&open));
        drop(listener);
        assert!(!accepts(&open));
    }
}
