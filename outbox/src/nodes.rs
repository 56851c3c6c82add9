//! A RabbitMQ cluster as the relay and the consumer see it: the node URLs of one
//! `AMQP_URL`, checked once, and the order to try them in.
//!
//! `AMQP_URL` may list the nodes of one cluster, separated by commas; one URL is a
//! list of one:
//!
//! ```
//! use txoutbox::nodes::{Nodes, Rotation};
//!
//! let nodes = Nodes::parse("amqp://app:s3cr3t@mq-1/%2f, amqp://app:s3cr3t@mq-2/%2f")?;
//! assert_eq!(nodes.to_string(), "amqp://app:***@mq-1/%2f,amqp://app:***@mq-2/%2f");
//!
//! let mut rotation = Rotation::new(nodes);
//! assert_eq!(rotation.node().host(), "mq-1");
//! rotation.connect_failed(); // mq-1 is down: mq-2 at once, no pause
//! assert_eq!(rotation.node().host(), "mq-2");
//! # Ok::<(), txoutbox::nodes::InvalidNodes>(())
//! ```
//!
//! The nodes of one cluster differ in host and port only: [`Nodes::parse`] refuses a
//! list whose nodes name different schemes, users, passwords, virtual hosts or options
//! (the query string), since connecting to one or another would then not be the same
//! thing. It also refuses an empty element and a node named twice.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use amq_protocol_uri::AMQPUri;

use crate::backoff::{HEALTHY_SESSION, RECONNECT_MAX, reconnect};
use crate::url::redact;

/// What separates the node URLs of a list. A comma inside a URL (in a password,
/// say) is written `%2C`.
pub const SEPARATOR: char = ',';

/// One node of the list: its URL as parsed for connecting, and as shown in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    uri: AMQPUri,
    shown: String,
}

/// The heartbeat asked for, in seconds, when a URL names none. lapin gives a
/// connection up after two heartbeats without a frame from the broker, looking every
/// half heartbeat: at 10 s, a frozen node is left within 25 s. The broker's own
/// default (RabbitMQ: 60 s) would take up to 150 s, with a consumer's deliveries
/// stopped all that time. Client and broker settle on the lower of their two values.
pub const DEFAULT_HEARTBEAT: u16 = 10;

impl Node {
    fn parse(url: &str) -> Result<Self, String> {
        let mut uri: AMQPUri = url.parse().map_err(|problem: String| {
            // The parser quotes a URL it cannot read, password and all.
            if problem.contains(url) {
                "not of the form amqp://user:password@host:port/vhost".to_owned()
            } else {
                problem
            }
        })?;
        // amq-protocol-uri 10.6 keeps only a domain name as the host and puts
        // `localhost` in place of an IPv6 address: connect to the address itself.
        if let Ok(parsed) = ::url::Url::parse(url)
            && let Some(::url::Host::Ipv6(address)) = parsed.host()
        {
            uri.authority.host = address.to_string();
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT);
        }
        Ok(Self {
            uri,
            shown: redact(url),
        })
    }

    /// The URL to connect with, as lapin takes it:
    /// `lapin::Connection::connect_uri(node.uri().clone(), properties)`.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.uri.authority.host
    }

    /// The port (5672 for `amqp`, 5671 for `amqps` when the URL names none).
    pub fn port(&self) -> u16 {
        self.uri.authority.port
    }

    /// What this node shares with every other node of its cluster, or the first thing
    /// it does not share.
    fn differs_from(&self, other: &Node) -> Option<&'static str> {
        let (mine, theirs) = (&self.uri, &other.uri);
        if mine.scheme != theirs.scheme {
            Some("scheme (amqp or amqps)")
        } else if mine.authority.userinfo != theirs.authority.userinfo {
            Some("user or password")
        } else if mine.vhost != theirs.vhost {
            Some("virtual host")
        } else if mine.query != theirs.query {
            Some("options (query string)")
        } else {
            None
        }
    }
}

/// The URL as given, with its password replaced by `***`.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Redacted, like [`Display`](fmt::Display): a node never prints its password.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Node").field(&self.shown).finish()
    }
}

/// The nodes of one RabbitMQ cluster (or one broker), in the order given; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nodes {
    nodes: Vec<Node>,
}

impl Nodes {
    /// Reads a comma-separated list of `amqp://` or `amqps://` URLs (blanks around
    /// each are ignored). Every node must parse, and all must share scheme, user,
    /// password, virtual host and options; an empty element or a host and port named
    /// twice is refused too. Errors show URLs with their passwords redacted.
    pub fn parse(list: &str) -> Result<Self, InvalidNodes> {
        if list.trim().is_empty() {
            return Err(InvalidNodes::Empty);
        }
        let mut nodes: Vec<Node> = Vec::new();
        for (index, url) in list.split(SEPARATOR).map(str::trim).enumerate() {
            let position = index + 1;
            if url.is_empty() {
                return Err(InvalidNodes::EmptyNode { position });
            }
            let node = Node::parse(url).map_err(|problem| InvalidNodes::NotAmqp {
                position,
                url: redact(url),
                problem,
            })?;
            if let Some(what) = nodes.first().and_then(|first| node.differs_from(first)) {
                return Err(InvalidNodes::Mismatch {
                    position,
                    url: node.shown,
                    what,
                });
            }
            let same_place = |n: &Node| n.host() == node.host() && n.port() == node.port();
            if let Some(earlier) = nodes.iter().position(same_place) {
                return Err(InvalidNodes::Repeated {
                    position,
                    first: earlier + 1,
                    url: node.shown,
                });
            }
            if node.uri.query.heartbeat == Some(0) {
                return Err(InvalidNodes::HeartbeatOff {
                    position,
                    url: node.shown,
                });
            }
            nodes.push(node);
        }
        Ok(Self { nodes })
    }

    /// The nodes, in the order given.
    pub fn iter(&self) -> std::slice::Iter<'_, Node> {
        self.nodes.iter()
    }
}

impl FromStr for Nodes {
    type Err = InvalidNodes;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::parse(list)
    }
}

impl<'a> IntoIterator for &'a Nodes {
    type Item = &'a Node;
    type IntoIter = std::slice::Iter<'a, Node>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The list as given, each password replaced by `***`.
impl fmt::Display for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&node.shown)?;
        }
        Ok(())
    }
}

/// A node list that cannot work, found before anything connects. URLs in it have
/// their passwords redacted; positions count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidNodes {
    /// No URL at all.
    #[error("no RabbitMQ URL given")]
    Empty,
    /// An element of the list is blank (two commas in a row, or one at an end).
    #[error("node {position} of the list is empty (two commas in a row, or one at an end)")]
    EmptyNode {
        /// Its place in the list.
        position: usize,
    },
    /// An element is not an `amqp://` or `amqps://` URL that lapin can connect to.
    #[error("node {position} is not an AMQP URL ({problem}): {url}")]
    NotAmqp {
        /// Its place in the list.
        position: usize,
        /// The element, redacted.
        url: String,
        /// What the parser said.
        problem: String,
    },
    /// A node differs from the first in more than its host and port.
    #[error(
        "node {position} ({url}) has another {what} than node 1; the nodes of one \
         cluster differ only in host and port"
    )]
    Mismatch {
        /// Its place in the list.
        position: usize,
        /// The node, redacted.
        url: String,
        /// What differs.
        what: &'static str,
    },
    /// `heartbeat=0`: no heartbeats, so a broker that hangs instead of dying (a frozen
    /// VM, a long pause) keeps its connections open and is never noticed.
    #[error(
        "node {position} ({url}) sets heartbeat=0, which turns heartbeats off: a broker that \
         hangs would never be noticed; leave it out (10 s) or set 5 to 60 seconds"
    )]
    HeartbeatOff {
        /// Its place in the list.
        position: usize,
        /// The node, redacted.
        url: String,
    },
    /// A host and port named twice.
    #[error("node {position} ({url}) repeats node {first}")]
    Repeated {
        /// Its place in the list.
        position: usize,
        /// The place of its first mention.
        first: usize,
        /// The node, redacted.
        url: String,
    },
}

/// Which node to connect to next, and how long to wait first.
///
/// It starts at the first node. After a session on node *i* ends, the next is *i+1*,
/// then *i+2*, ..., wrapping around, so the node just lost is tried last, not first.
/// A connect that fails moves on to the next node at once; only when every node has
/// failed in a row is there a pause, the reconnect backoff
/// ([`backoff::reconnect`](crate::backoff::reconnect)), after which the round starts
/// again. A session shorter than [`HEALTHY_SESSION`] counts as a failure of its node;
/// a longer one starts the backoff over.
pub struct Rotation {
    nodes: Nodes,
    current: usize,
    failures: usize,
    backoff: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Rotation {
    /// A rotation over `nodes`, starting at the first.
    pub fn new(nodes: Nodes) -> Self {
        Self {
            nodes,
            current: 0,
            failures: 0,
            backoff: Box::new(reconnect()),
        }
    }

    /// The node to connect to now.
    pub fn node(&self) -> &Node {
        &self.nodes.nodes[self.current]
    }

    /// Connecting to [`Rotation::node`] failed (refused, timed out, or the session
    /// could not be set up). Moves to the next node and returns the pause before
    /// connecting to it: zero, unless this failure completed a round.
    pub fn connect_failed(&mut self) -> Duration {
        self.advance();
        self.failures += 1;
        if self.failures < self.nodes.nodes.len() {
            return Duration::ZERO;
        }
        self.failures = 0;
        self.backoff.next().unwrap_or(RECONNECT_MAX)
    }

    /// A session on [`Rotation::node`] ended after `lasted`. Moves to the next node
    /// and returns the pause before connecting to it: zero after a healthy session
    /// (one that lasted [`HEALTHY_SESSION`]); a shorter one counts as a failure.
    pub fn session_ended(&mut self, lasted: Duration) -> Duration {
        if lasted < HEALTHY_SESSION {
            return self.connect_failed();
        }
        self.backoff = Box::new(reconnect());
        self.failures = 0;
        self.advance();
        Duration::ZERO
    }

    fn advance(&mut self) {
        self.current = (self.current + 1) % self.nodes.nodes.len();
    }
}

impl fmt::Debug for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotation")
            .field("node", self.node())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::RECONNECT_MIN;

    fn hosts(nodes: &Nodes) -> Vec<&str> {
        nodes.iter().map(Node::host).collect()
    }

    #[test]
    fn one_url_is_a_list_of_one() {
        let nodes = Nodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(hosts(&nodes), ["127.0.0.1"]);
        let node = nodes.iter().next().unwrap();
        assert_eq!(node.port(), 5672);
        assert_eq!(node.uri().vhost, "/");
        assert_eq!(node.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
    }

    #[test]
    fn a_list_keeps_its_order_and_ignores_blanks_around_urls() {
        let nodes: Nodes = " amqp://u:p@mq-1/v , amqp://u:p@mq-2:5673/v,amqp://u:p@mq-3/v "
            .parse()
            .unwrap();
        assert_eq!(hosts(&nodes), ["mq-1", "mq-2", "mq-3"]);
        let ports: Vec<u16> = nodes.iter().map(Node::port).collect();
        assert_eq!(ports, [5672, 5673, 5672]);
        assert_eq!(
            nodes.to_string(),
            "amqp://u:***@mq-1/v,amqp://u:***@mq-2:5673/v,amqp://u:***@mq-3/v"
        );
        assert!(!format!("{nodes:?}").contains(":p@"), "{nodes:?}");
    }

    #[test]
    fn an_ipv6_node_is_connected_to_by_its_address() {
        let nodes = Nodes::parse("amqps://u:p@[::1]:5671/%2f,amqps://u:p@mq/%2f").unwrap();
        assert_eq!(hosts(&nodes), ["::1", "mq"]);
    }

    #[test]
    fn empty_lists_and_elements_are_refused() {
        assert_eq!(Nodes::parse(" "), Err(InvalidNodes::Empty));
        assert_eq!(
            Nodes::parse("amqp://a,,amqp://b"),
            Err(InvalidNodes::EmptyNode { position: 2 })
        );
        assert_eq!(
            Nodes::parse("amqp://a,amqp://b,"),
            Err(InvalidNodes::EmptyNode { position: 3 })
        );
    }

    #[test]
    fn what_is_not_amqp_is_refused_without_its_password() {
        for (list, position) in [
            ("http://guest:hunter2@mq", 1),
            ("amqp://mq,guest:hunter2@mq-2:5672", 2),
            ("amqp:guest:hunter2@mq", 1),
            ("amqp://guest:hunter2@mq/%2f?heartbeat=often", 1),
            ("amqp://guest:hunter2@mq:99999/%2f", 1),
        ] {
            let error = Nodes::parse(list).unwrap_err();
            assert!(
                matches!(error, InvalidNodes::NotAmqp { position: p, .. } if p == position),
                "{list}: {error:?}"
            );
            let said = error.to_string();
            assert!(said.contains("not an AMQP URL"), "{said}");
            assert!(
                !said.contains("hunter2"),
                "{list} leaked a password: {said}"
            );
        }
    }

    #[test]
    fn heartbeats_turned_off_are_refused_without_the_password() {
        let error = Nodes::parse("amqp://guest:hunter2@mq/%2f?heartbeat=0").unwrap_err();
        assert!(
            matches!(error, InvalidNodes::HeartbeatOff { position: 1, .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let later = Nodes::parse("amqp://mq-1?heartbeat=0,amqp://mq-2?heartbeat=0").unwrap_err();
        assert!(
            matches!(later, InvalidNodes::HeartbeatOff { position: 1, .. }),
            "{later:?}"
        );
        assert!(Nodes::parse("amqp://mq/%2f?heartbeat=5").is_ok());
    }

    #[test]
    fn a_url_without_a_heartbeat_asks_for_ten_seconds() {
        let heartbeat = |list: &str| {
            let nodes = Nodes::parse(list).unwrap();
            nodes
                .iter()
                .map(|node| node.uri().query.heartbeat)
                .collect::<Vec<_>>()
        };
        assert_eq!(heartbeat("amqp://mq/%2f"), [Some(DEFAULT_HEARTBEAT)]);
        assert_eq!(heartbeat("amqp://mq/%2f?heartbeat=30"), [Some(30)]);
        assert_eq!(
            heartbeat("amqp://mq-1/%2f?heartbeat=10,amqp://mq-2/%2f"),
            [Some(10), Some(10)]
        );
    }

    #[test]
    fn nodes_of_one_cluster_differ_only_in_host_and_port() {
        let first = "amqp://app:hunter2@mq-1/shop";
        for (second, what) in [
            ("amqps://app:hunter2@mq-2/shop", "scheme (amqp or amqps)"),
            ("amqp://other:hunter2@mq-2/shop", "user or password"),
            ("amqp://app:hunter3@mq-2/shop", "user or password"),
            ("amqp://app:hunter2@mq-2/other", "virtual host"),
            (
                "amqp://app:hunter2@mq-2/shop?heartbeat=5",
                "options (query string)",
            ),
        ] {
            let error = Nodes::parse(&format!("{first},{second}")).unwrap_err();
            assert_eq!(
                error,
                InvalidNodes::Mismatch {
                    position: 2,
                    url: redact(second),
                    what
                }
            );
            assert!(!error.to_string().contains("hunter"), "{error}");
        }
        // The same virtual host, written two ways.
        assert!(Nodes::parse("amqp://mq-1,amqp://mq-2/%2f").is_ok());
    }

    #[test]
    fn a_node_named_twice_is_refused() {
        assert_eq!(
            Nodes::parse("amqp://mq-1,amqp://mq-2,amqp://mq-1:5672/%2f"),
            Err(InvalidNodes::Repeated {
                position: 3,
                first: 1,
                url: "amqp://mq-1:5672/%2f".into()
            })
        );
    }

    fn rotation(list: &str) -> Rotation {
        Rotation::new(Nodes::parse(list).unwrap())
    }

    #[test]
    fn after_a_session_ends_the_next_node_is_tried_at_once_wrapping_around() {
        let mut rotation = rotation("amqp://a,amqp://b,amqp://c");
        let mut tried = vec![rotation.node().host().to_owned()];
        for _ in 0..4 {
            assert_eq!(rotation.session_ended(HEALTHY_SESSION), Duration::ZERO);
            tried.push(rotation.node().host().to_owned());
        }
        assert_eq!(tried, ["a", "b", "c", "a", "b"]);
    }

    #[test]
    fn only_a_full_round_of_failures_pauses() {
        let mut rotation = rotation("amqp://a,amqp://b,amqp://c");
        assert_eq!(rotation.session_ended(HEALTHY_SESSION * 10), Duration::ZERO);
        assert_eq!(rotation.node().host(), "b");
        // b and c refuse: on to the next at once.
        assert_eq!(rotation.connect_failed(), Duration::ZERO);
        assert_eq!(rotation.node().host(), "c");
        assert_eq!(rotation.connect_failed(), Duration::ZERO);
        assert_eq!(rotation.node().host(), "a");
        // a, lost a moment ago, refuses too: every node failed, so a pause, then b.
        let pause = rotation.connect_failed();
        assert!(pause >= RECONNECT_MIN, "{pause:?}");
        assert_eq!(rotation.node().host(), "b");
        // The next round starts afresh.
        assert_eq!(rotation.connect_failed(), Duration::ZERO);
        assert_eq!(rotation.node().host(), "c");
    }

    #[test]
    fn a_short_session_counts_as_a_failure() {
        let mut rotation = rotation("amqp://a,amqp://b");
        assert_eq!(
            rotation.session_ended(Duration::from_millis(10)),
            Duration::ZERO
        );
        assert_eq!(rotation.node().host(), "b");
        assert!(rotation.session_ended(Duration::from_millis(10)) >= RECONNECT_MIN);
        assert_eq!(rotation.node().host(), "a");
    }

    #[test]
    fn one_node_pauses_after_each_failure_and_a_healthy_session_resets_the_backoff() {
        let mut rotation = rotation("amqp://a");
        let pauses: Vec<Duration> = (0..8).map(|_| rotation.connect_failed()).collect();
        assert!(pauses.iter().all(|p| *p >= RECONNECT_MIN), "{pauses:?}");
        assert!(pauses[7] >= RECONNECT_MAX, "grows to the cap: {pauses:?}");
        assert_eq!(rotation.node().host(), "a");

        assert_eq!(rotation.session_ended(HEALTHY_SESSION), Duration::ZERO);
        let pause = rotation.connect_failed();
        assert!(
            (RECONNECT_MIN..=RECONNECT_MIN * 2).contains(&pause),
            "starts over: {pause:?}"
        );
    }
}
