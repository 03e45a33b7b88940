//! The sampler: the standard choices of `OTEL_TRACES_SAMPLER`, with one difference a public
//! service needs. A caller's `traceparent` (or `b3`) is continued, its trace id kept, but its
//! sampled flag is not followed: any caller could otherwise have every one of its requests
//! exported, before it even authenticates. A span whose parent came over the wire is decided like
//! a root span, by the configured ratio; only a parent inside this process is followed.
//!
//! The ratio is applied to a keyed hash of the trace id rather than to the id's bits (the
//! SDK's `TraceIdRatioBased`), with a key drawn at start-up: a caller choosing its trace ids
//! cannot pick ones that are always sampled. The same trace id gets the same answer for the life
//! of the process, so a trace's spans here are all kept or all dropped.

use std::hash::{BuildHasher, RandomState};

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

use super::environment::SamplerChoice;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    Always,
    Never,
    /// Sampled when the keyed hash of the trace id is below this.
    Below(u64),
}

/// Decides which spans are recorded and exported.
#[derive(Debug, Clone)]
pub(crate) struct BrokerSampler {
    root: Root,
    /// Follow a parent in this process (the `parentbased_*` samplers); the `traceidratio`,
    /// `always_*` ones decide every span alike, which gives the same answer for one trace id.
    follow_local_parent: bool,
    key: RandomState,
}

impl BrokerSampler {
    pub(crate) fn new(choice: SamplerChoice) -> BrokerSampler {
        let ratio = |r: f64| {
            if r >= 1.0 {
                Root::Always
            } else if r <= 0.0 {
                Root::Never
            } else {
                // r < 1, so the product is below 2^64; `as` saturates anyway.
                Root::Below((r * 18_446_744_073_709_551_616.0) as u64)
            }
        };
        let (root, follow_local_parent) = match choice {
            SamplerChoice::AlwaysOn => (Root::Always, false),
            SamplerChoice::AlwaysOff => (Root::Never, false),
            SamplerChoice::Ratio(r) => (ratio(r), false),
            SamplerChoice::ParentBasedAlwaysOn => (Root::Always, true),
            SamplerChoice::ParentBasedAlwaysOff => (Root::Never, true),
            SamplerChoice::ParentBasedRatio(r) => (ratio(r), true),
        };
        BrokerSampler {
            root,
            follow_local_parent,
            key: RandomState::new(),
        }
    }

    /// The decision for a span without a parent in this process.
    pub(crate) fn samples(&self, trace_id: TraceId) -> bool {
        match self.root {
            Root::Always => true,
            Root::Never => false,
            Root::Below(limit) => self.key.hash_one(trace_id.to_bytes()) < limit,
        }
    }
}

impl ShouldSample for BrokerSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone())
            .filter(opentelemetry::trace::SpanContext::is_valid);
        let sampled = match &parent {
            Some(parent) if self.follow_local_parent && !parent.is_remote() => parent.is_sampled(),
            _ => self.samples(trace_id),
        };
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent.map_or_else(TraceState::default, |p| p.trace_state().clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};

    fn decide(sampler: &BrokerSampler, parent: Option<SpanContext>, trace_id: TraceId) -> bool {
        let cx = parent.map(|p| Context::new().with_remote_span_context(p));
        let result = sampler.should_sample(
            cx.as_ref(),
            trace_id,
            "request",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    fn remote_sampled(trace_id: TraceId) -> SpanContext {
        SpanContext::new(
            trace_id,
            SpanId::from_bytes([1; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }

    fn id(n: u128) -> TraceId {
        TraceId::from_bytes(n.to_be_bytes())
    }

    #[test]
    fn a_remote_sampled_flag_is_not_followed() {
        for choice in [
            SamplerChoice::ParentBasedRatio(0.0),
            SamplerChoice::ParentBasedAlwaysOff,
            SamplerChoice::Ratio(0.0),
            SamplerChoice::AlwaysOff,
        ] {
            let sampler = BrokerSampler::new(choice);
            for n in 1..200u128 {
                assert!(
                    !decide(&sampler, Some(remote_sampled(id(n))), id(n)),
                    "{choice:?}"
                );
            }
        }
    }

    #[test]
    fn a_local_parent_is_followed_by_the_parent_based_samplers() {
        let sampler = BrokerSampler::new(SamplerChoice::ParentBasedAlwaysOff);
        let mut local = remote_sampled(id(7));
        local = SpanContext::new(
            local.trace_id(),
            local.span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(local);
        let result = sampler.should_sample(Some(&cx), id(7), "x", &SpanKind::Internal, &[], &[]);
        assert_eq!(result.decision, SamplingDecision::RecordAndSample);
    }

    #[test]
    fn the_ratio_holds_even_for_ids_the_standard_sampler_always_takes() {
        let sampler = BrokerSampler::new(SamplerChoice::ParentBasedRatio(0.5));
        // The SDK's ratio sampler reads the low 64 bits: ids whose low bits are zero are always
        // under its threshold. Here, about half of them are sampled.
        let chosen = (1..=2000u128)
            .filter(|n| decide(&sampler, Some(remote_sampled(id(n << 64))), id(n << 64)))
            .count();
        assert!((800..=1200).contains(&chosen), "{chosen} of 2000");
        // The same id always gets the same answer.
        let first = decide(&sampler, None, id(42 << 64));
        assert!((0..20).all(|_| decide(&sampler, None, id(42 << 64)) == first));
    }

    #[test]
    fn ratios_at_the_ends() {
        let on = BrokerSampler::new(SamplerChoice::Ratio(1.0));
        let off = BrokerSampler::new(SamplerChoice::Ratio(0.0));
        for n in 1..100u128 {
            assert!(on.samples(id(n)));
            assert!(!off.samples(id(n)));
        }
    }
}
