//! Traces that continue across services (feature `opentelemetry`).
//!
//! A message carries its writer's W3C trace context in the `traceparent` header. With
//! this feature, [`MessageBuilder::payload`](crate::MessageBuilder::payload) fills it
//! in from the current `tracing` span (when that span belongs to an OpenTelemetry
//! trace, through `tracing-opentelemetry`), and a consumer makes its handler's span a
//! child of the incoming one with [`set_parent`]. One trace then runs from the request
//! that wrote the row, through the relay, into the handler of the next service and
//! whatever that handler writes to its own outbox.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's trace context as a `traceparent` value
/// (`00-{trace id}-{span id}-{flags}`), if the span is part of a trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span that `traceparent` names. Returns false,
/// and leaves `span` alone, when the value is not a version-00 W3C traceparent: a
/// malformed header from another service must not break the handler.
pub fn set_parent(span: &tracing::Span, traceparent: &str) -> bool {
    let Some(remote) = parse(traceparent) else {
        return false;
    };
    let context = opentelemetry::Context::new().with_remote_span_context(remote);
    span.set_parent(context).is_ok()
}

/// A W3C `traceparent` (version 00) as a remote span context.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let shaped = version == "00"
        && parts.next().is_none()
        && trace_id.len() == 32
        && span_id.len() == 16
        && flags.len() == 2;
    if !shaped {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_w3c_traceparent_and_refuses_anything_else() {
        let context = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(context.is_sampled() && context.is_remote());
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_trace_there_is_no_traceparent() {
        assert_eq!(current_traceparent(), None);
    }
}
