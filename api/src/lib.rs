//! The control plane's API, `picket.control.v1`: the sidecar's `Watch`
//! stream of its pod's view.
//!
//! The Rust code in `gen/` is generated from `proto/` and committed (as
//! linkerd2-proxy-api does), so that building the sidecar needs no protobuf
//! compiler; `tests::generated_code_is_up_to_date` regenerates it and fails
//! when it differs (run with `PICKET_BLESS=1` to rewrite it).

pub mod convert;

/// The view format this code speaks: 3 is views with other pods' egress
/// sides compiled (`SourceEgress`), large commits in parts (`more`), and
/// addresses with the same egress sides in one entry (`addresses`); 4 adds
/// outbound parts (destinations' ingress sides, Services, EndpointSlices),
/// and a view without them decides outbound connections wrong; 5 adds the
/// audited policies' rules to the compiled sides, and a side that only
/// audited policies make (no enforced policy: an older sidecar would
/// refuse it, or read it as isolating). A
/// sidecar or a control plane of another format would read a view wrong
/// (fail open), so they refuse each other: the sidecar sends it in the
/// [`VIEW_FORMAT_HEADER`] of its `Watch`, the control plane in
/// `WatchResponse.view_format` of every full view.
pub const VIEW_FORMAT: u32 = 7;

/// The request header by which a sidecar that captures outbound
/// connections asks for a view with outbound parts (value `1`).
pub const VIEW_OUTBOUND_HEADER: &str = "picket-view-outbound";

/// The request header that carries the sidecar's [`VIEW_FORMAT`].
pub const VIEW_FORMAT_HEADER: &str = "picket-view-format";

/// The generated messages and service code.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    include!("gen/picket.control.v1.rs");
}

#[cfg(test)]
mod tests;
