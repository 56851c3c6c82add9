//! What runs when a saga ends: the service's own hooks, in the transaction that moves
//! the saga to `completed`, `compensated` or `failed`, so that the service's row and
//! the saga's state commit together or not at all.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use txoutbox_inbox::BoxError;

/// An async function `(&mut PgConnection, D) -> Result<(), E>` run in the transaction
/// that completes a saga, with the saga's data. Implemented for every such `async fn`
/// and capture-free async closure; you do not implement it yourself.
pub trait OnCompleted<'a, D, E>: Send + Sync + 'static {
    /// The hook's future.
    type Future: Future<Output = Result<(), E>> + Send + 'a;

    /// Calls the hook.
    fn call(&self, conn: &'a mut PgConnection, data: D) -> Self::Future;
}

impl<'a, F, Fut, D, E> OnCompleted<'a, D, E> for F
where
    F: Fn(&'a mut PgConnection, D) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, conn: &'a mut PgConnection, data: D) -> Fut {
        self(conn, data)
    }
}

/// An async function `(&mut PgConnection, D, String) -> Result<(), E>` run in the
/// transaction that moves a saga to `compensated` or `failed`, with the saga's data
/// and why it did not complete.
pub trait OnEnded<'a, D, E>: Send + Sync + 'static {
    /// The hook's future.
    type Future: Future<Output = Result<(), E>> + Send + 'a;

    /// Calls the hook.
    fn call(&self, conn: &'a mut PgConnection, data: D, why: String) -> Self::Future;
}

impl<'a, F, Fut, D, E> OnEnded<'a, D, E> for F
where
    F: Fn(&'a mut PgConnection, D, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, conn: &'a mut PgConnection, data: D, why: String) -> Fut {
        self(conn, data, why)
    }
}

type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// A hook's function, erased: `(connection, data as JSON, why) -> future`.
type ErasedHook =
    dyn for<'a> Fn(&'a mut PgConnection, serde_json::Value, String) -> HookFuture<'a> + Send + Sync;

/// How long an end hook may take before its try counts as failed. It runs holding
/// the saga's row lock and, on the reply path, the inbox batch's transaction: one
/// that waits on a slow service must not hold them, nor the orchestrator, for good.
/// A statement it waits on in PostgreSQL is waited out first (the connection must be
/// quiet before the savepoint is rolled back); PostgreSQL's `statement_timeout`
/// bounds that.
pub const HOOK_TIME_LIMIT: Duration = Duration::from_secs(30);

/// A hook with the saga's data type erased: the data comes as JSON and is decoded
/// for it; an error, a panic, a try over [`HOOK_TIME_LIMIT`], or data that no longer
/// fits the type all come back as the hook's error.
#[derive(Clone)]
pub(crate) struct Hook(Arc<ErasedHook>);

/// An `on_completed` hook seen as an ending hook that is not told why.
struct IgnoreWhy<H>(H);

impl<'a, D, E, H> OnEnded<'a, D, E> for IgnoreWhy<H>
where
    H: OnCompleted<'a, D, E>,
{
    type Future = H::Future;

    fn call(&self, conn: &'a mut PgConnection, data: D, _why: String) -> Self::Future {
        self.0.call(conn, data)
    }
}

impl Hook {
    pub(crate) fn completed<D, E, H>(hook: H) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnCompleted<'a, D, E>,
    {
        Self::ended(IgnoreWhy(hook))
    }

    pub(crate) fn ended<D, E, H>(hook: H) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnEnded<'a, D, E>,
    {
        let hook = Arc::new(hook);
        Self(Arc::new(move |conn, data, why| {
            let hook = Arc::clone(&hook);
            Box::pin(async move {
                let data: D = serde_json::from_value(data)?;
                hook.call(conn, data, why).await.map_err(Into::into)
            })
        }))
    }

    /// Runs the hook, for at most `limit`; a panic inside it is its error, not the
    /// orchestrator's crash.
    pub(crate) async fn run(
        &self,
        conn: &mut PgConnection,
        data: serde_json::Value,
        why: String,
        limit: Duration,
    ) -> Result<(), BoxError> {
        let running = AssertUnwindSafe((self.0)(conn, data, why)).catch_unwind();
        match tokio::time::timeout(limit, running).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                Err(format!("the hook panicked: {}", txoutbox::panic::message(&*panic)).into())
            }
            Err(_) => Err(format!("the hook took over {limit:?}, so its try was given up").into()),
        }
    }
}

/// The hooks of one definition, by the state they end in, and how long one may take.
#[derive(Clone)]
pub(crate) struct Hooks {
    pub(crate) completed: Option<Hook>,
    pub(crate) compensated: Option<Hook>,
    pub(crate) failed: Option<Hook>,
    pub(crate) time_limit: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            completed: None,
            compensated: None,
            failed: None,
            time_limit: HOOK_TIME_LIMIT,
        }
    }
}
