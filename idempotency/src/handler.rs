//! Handlers as plain async functions: what [`Consumer::on`](crate::Consumer::on)
//! accepts, and how the consumer calls one without knowing its types.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::decision::Failure;
use crate::envelope::Envelope;

/// Any error a handler returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An async function `(Context<'_>, T) -> Result<R, E>`: a handler for messages
/// whose payload deserializes into `T`. Implemented for every such `async fn` and
/// capture-free async closure; you do not implement it yourself.
///
/// The lifetime parameter is how the future may borrow the context (the inbox's
/// transaction) while it runs on a multi-threaded runtime: the future must be
/// `Send`, and this trait is where that is said.
pub trait Handler<'a, T, R, E>: Send + Sync + 'static {
    /// The handler's future.
    type Future: Future<Output = Result<R, E>> + Send + 'a;

    /// Calls the handler.
    fn call(&self, ctx: Context<'a>, payload: T) -> Self::Future;
}

impl<'a, F, Fut, T, R, E> Handler<'a, T, R, E> for F
where
    F: Fn(Context<'a>, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, ctx: Context<'a>, payload: T) -> Fut {
        self(ctx, payload)
    }
}

/// An async function `(Context<'_>, T, S) -> Result<R, E>`: a handler that also
/// gets a clone of a state `S` (a policy, a client, a counter behind an `Arc`), for
/// [`Consumer::on_with`](crate::Consumer::on_with). Async closures that capture
/// their environment cannot hand the consumer a `Send` future; this is the way to
/// give a handler something of its own.
pub trait StatefulHandler<'a, T, S, R, E>: Send + Sync + 'static {
    /// The handler's future.
    type Future: Future<Output = Result<R, E>> + Send + 'a;

    /// Calls the handler.
    fn call(&self, ctx: Context<'a>, payload: T, state: S) -> Self::Future;
}

impl<'a, F, Fut, T, S, R, E> StatefulHandler<'a, T, S, R, E> for F
where
    F: Fn(Context<'a>, T, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, ctx: Context<'a>, payload: T, state: S) -> Fut {
        self(ctx, payload, state)
    }
}

/// A stateful handler with its state: a [`Handler`] like any other, for APIs that
/// take a `Handler` and have no `_with` variant (the `txoutbox-saga` crate's participant
/// helpers): `.action("payment.charge", WithState::new(charge, policy))`.
pub struct WithState<H, S> {
    pub(crate) handler: H,
    pub(crate) state: S,
}

impl<H, S> WithState<H, S> {
    /// `handler`, called with a clone of `state` each time.
    pub fn new(handler: H, state: S) -> Self {
        Self { handler, state }
    }
}

impl<'a, H, S, T, R, E> Handler<'a, T, R, E> for WithState<H, S>
where
    H: StatefulHandler<'a, T, S, R, E>,
    S: Clone + Send + Sync + 'static,
{
    type Future = H::Future;

    fn call(&self, ctx: Context<'a>, payload: T) -> H::Future {
        self.handler.call(ctx, payload, self.state.clone())
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler with its types erased: the consumer keeps one per step.
pub(crate) trait Route: Send + Sync {
    /// Decodes the payload for the handler, before any transaction opens: a payload
    /// that does not fit is dead-lettered without touching the database.
    fn prepare(&self, envelope: &Envelope) -> Result<Box<dyn Call>, serde_json::Error>;
}

/// A handler with its decoded payload, ready to run once.
pub(crate) trait Call: Send {
    /// Runs the handler; its result comes back as the JSON the inbox stores.
    fn call<'a>(
        self: Box<Self>,
        ctx: Context<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, Failure>>;
}

/// The types a handler takes and returns, for a struct that holds none of them.
type Signature<T, R, E> = PhantomData<fn(T) -> Result<R, E>>;

/// The route of a typed handler.
pub(crate) struct Typed<H, T, R, E> {
    handler: Arc<H>,
    types: Signature<T, R, E>,
}

impl<H, T, R, E> Typed<H, T, R, E> {
    pub(crate) fn new(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
            types: PhantomData,
        }
    }
}

impl<H, T, R, E> Route for Typed<H, T, R, E>
where
    H: for<'a> Handler<'a, T, R, E>,
    T: DeserializeOwned + Send + 'static,
    R: Serialize + 'static,
    E: Into<BoxError> + 'static,
{
    fn prepare(&self, envelope: &Envelope) -> Result<Box<dyn Call>, serde_json::Error> {
        Ok(Box::new(Ready {
            handler: Arc::clone(&self.handler),
            payload: envelope.payload::<T>()?,
            types: PhantomData,
        }))
    }
}

struct Ready<H, T, R, E> {
    handler: Arc<H>,
    payload: T,
    types: Signature<(), R, E>,
}

impl<H, T, R, E> Call for Ready<H, T, R, E>
where
    H: for<'a> Handler<'a, T, R, E>,
    T: Send + 'static,
    R: Serialize + 'static,
    E: Into<BoxError> + 'static,
{
    fn call<'a>(
        self: Box<Self>,
        ctx: Context<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, Failure>> {
        let Ready {
            handler, payload, ..
        } = *self;
        Box::pin(async move {
            let result = handler
                .call(ctx, payload)
                .await
                .map_err(|error| Failure::Handler(error.into()))?;
            serde_json::to_value(result).map_err(|error| {
                Failure::Refused(format!(
                    "the handler's result is not serializable to JSON: {error}"
                ))
            })
        })
    }
}
