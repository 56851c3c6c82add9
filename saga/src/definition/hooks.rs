//! What runs when a saga ends: the service's own hooks, in the transaction that moves
//! the saga to `completed`, `compensated` or `failed`, so that the service's row and
//! the saga's state commit together or not at all.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

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

/// A hook with the saga's data type erased: the data comes as JSON and is decoded
/// for it; an error, a panic, or data that no longer fits the type all come back as
/// the hook's error.
/// A hook's function, erased: `(connection, data as JSON, why) -> future`.
type ErasedHook =
    dyn for<'a> Fn(&'a mut PgConnection, serde_json::Value, String) -> HookFuture<'a> + Send + Sync;

#[derive(Clone)]
pub(crate) struct Hook(Arc<ErasedHook>);

impl Hook {
    pub(crate) fn completed<D, E, H>(hook: H) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnCompleted<'a, D, E>,
    {
        let hook = Arc::new(hook);
        Self(Arc::new(move |conn, data, _why| {
            let hook = Arc::clone(&hook);
            Box::pin(async move {
                let data: D = serde_json::from_value(data)?;
                hook.call(conn, data).await.map_err(Into::into)
            })
        }))
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

    /// Runs the hook; a panic inside it is its error, not the orchestrator's crash.
    pub(crate) async fn run(
        &self,
        conn: &mut PgConnection,
        data: serde_json::Value,
        why: String,
    ) -> Result<(), BoxError> {
        match AssertUnwindSafe((self.0)(conn, data, why))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                Err(format!("the hook panicked: {message}").into())
            }
        }
    }
}

/// The hooks of one definition, by the state they end in.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) completed: Option<Hook>,
    pub(crate) compensated: Option<Hook>,
    pub(crate) failed: Option<Hook>,
}
