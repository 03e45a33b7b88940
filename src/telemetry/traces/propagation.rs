//! The propagators `OTEL_PROPAGATORS` names: W3C trace context and baggage from the SDK, B3
//! (single header `b3`, and the `X-B3-*` headers) written here — the SDK has no B3 propagator,
//! and the crate that does (opentelemetry-zipkin) brings a Zipkin exporter along.
//!
//! As the specification asks of B3, both B3 propagators read either encoding, the single header
//! first; `b3` writes the single header, `b3multi` the `X-B3-*` ones.

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::environment::PropagatorName;

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// The configured propagators as one.
pub(crate) fn composite(names: &[PropagatorName]) -> TextMapCompositePropagator {
    let propagators = names
        .iter()
        .map(|name| -> Box<dyn TextMapPropagator + Send + Sync> {
            match name {
                PropagatorName::TraceContext => Box::new(TraceContextPropagator::new()),
                PropagatorName::Baggage => Box::new(BaggagePropagator::new()),
                PropagatorName::B3 => Box::new(B3::new(false)),
                PropagatorName::B3Multi => Box::new(B3::new(true)),
            }
        })
        .collect();
    TextMapCompositePropagator::new(propagators)
}

/// B3, writing the single header or the multiple ones.
#[derive(Debug)]
struct B3 {
    multi: bool,
    fields: Vec<String>,
}

impl B3 {
    fn new(multi: bool) -> B3 {
        let fields = if multi {
            vec![B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED]
        } else {
            vec![B3_SINGLE]
        };
        B3 {
            multi,
            fields: fields.into_iter().map(str::to_owned).collect(),
        }
    }
}

/// Lower-case hex of exactly `len` digits, as B3 writes ids.
fn lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A B3 trace id: 32 digits, or 64-bit ids of 16 digits (left-padded, as B3 says).
fn trace_id(text: &str) -> Option<TraceId> {
    let id = if lower_hex(text, 32) {
        TraceId::from_hex(text).ok()?
    } else if lower_hex(text, 16) {
        TraceId::from_hex(&format!("{text:0>32}")).ok()?
    } else {
        return None;
    };
    (id != TraceId::INVALID).then_some(id)
}

fn span_id(text: &str) -> Option<SpanId> {
    let id = lower_hex(text, 16)
        .then(|| SpanId::from_hex(text).ok())
        .flatten()?;
    (id != SpanId::INVALID).then_some(id)
}

fn remote(trace_id: TraceId, span_id: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::default())
}

/// `b3: {trace id}-{span id}[-{sampling state}[-{parent span id}]]`. A lone sampling state
/// carries no ids, so nothing to continue.
fn single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace = trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => false,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(remote(trace, span, sampled))
}

fn multiple(extractor: &dyn Extractor) -> Option<SpanContext> {
    let trace = trace_id(extractor.get(B3_TRACE_ID)?.trim())?;
    let span = span_id(extractor.get(B3_SPAN_ID)?.trim())?;
    let debug = extractor.get(B3_FLAGS).map(str::trim) == Some("1");
    let sampled = debug || matches!(extractor.get(B3_SAMPLED).map(str::trim), Some("1" | "true"));
    Some(remote(trace, span, sampled))
}

impl TextMapPropagator for B3 {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        let sampled = if context.is_sampled() { "1" } else { "0" };
        if self.multi {
            injector.set(B3_TRACE_ID, context.trace_id().to_string());
            injector.set(B3_SPAN_ID, context.span_id().to_string());
            injector.set(B3_SAMPLED, sampled.to_owned());
        } else {
            injector.set(
                B3_SINGLE,
                format!("{}-{}-{sampled}", context.trace_id(), context.span_id()),
            );
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let found = extractor
            .get(B3_SINGLE)
            .and_then(single)
            .or_else(|| multiple(extractor));
        match found {
            Some(context) => cx.with_remote_span_context(context),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn extracted(propagator: &dyn TextMapPropagator, pairs: &[(&str, &str)]) -> SpanContext {
        propagator
            .extract_with_context(&Context::new(), &headers(pairs))
            .span()
            .span_context()
            .clone()
    }

    const TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const SPAN: &str = "e457b5a2e4d86bd1";

    #[test]
    fn b3_reads_the_single_header_and_the_multiple_ones() {
        for multi in [false, true] {
            let b3 = B3::new(multi);
            let single = extracted(
                &b3,
                &[("b3", &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))],
            );
            assert_eq!(single.trace_id().to_string(), TRACE);
            assert_eq!(single.span_id().to_string(), SPAN);
            assert!(single.is_sampled() && single.is_remote());
            let many = extracted(
                &b3,
                &[
                    ("x-b3-traceid", TRACE),
                    ("x-b3-spanid", SPAN),
                    ("x-b3-sampled", "0"),
                ],
            );
            assert_eq!(many.trace_id().to_string(), TRACE);
            assert!(!many.is_sampled());
            let short = extracted(&b3, &[("b3", &format!("64fe8b2a57d3eff7-{SPAN}"))]);
            assert_eq!(
                short.trace_id().to_string(),
                "000000000000000064fe8b2a57d3eff7"
            );
        }
    }

    #[test]
    fn b3_refuses_what_is_not_b3() {
        let b3 = B3::new(false);
        for bad in [
            "1",
            "0",
            "d",
            TRACE,
            &format!("{TRACE}-0000000000000000-1"),
            &format!("00000000000000000000000000000000-{SPAN}-1"),
            &format!("{}-{SPAN}-1", TRACE.to_uppercase()),
            &format!("{TRACE}-{SPAN}-x"),
            &format!("{TRACE}-{SPAN}-1-{SPAN}-extra"),
        ] {
            assert!(!extracted(&b3, &[("b3", bad)]).is_valid(), "{bad}");
        }
    }

    #[test]
    fn b3_writes_its_own_encoding() {
        let context = remote(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            true,
        );
        let cx = Context::new().with_remote_span_context(context);
        let mut single = HashMap::new();
        B3::new(false).inject_context(&cx, &mut single);
        assert_eq!(single, headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]));
        let mut many = HashMap::new();
        B3::new(true).inject_context(&cx, &mut many);
        assert_eq!(
            many,
            headers(&[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-sampled", "1")
            ])
        );
    }

    #[test]
    fn the_composite_reads_each_named_encoding() {
        let both = composite(&[PropagatorName::TraceContext, PropagatorName::B3]);
        let w3c = extracted(&both, &[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
        assert_eq!(w3c.trace_id().to_string(), TRACE);
        let b3 = extracted(&both, &[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        assert_eq!(b3.trace_id().to_string(), TRACE);
        let only_w3c = composite(&[PropagatorName::TraceContext]);
        assert!(!extracted(&only_w3c, &[("b3", &format!("{TRACE}-{SPAN}-1"))]).is_valid());
        assert!(
            !extracted(
                &composite(&[]),
                &[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]
            )
            .is_valid()
        );
    }
}
