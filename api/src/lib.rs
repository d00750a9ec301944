//! The control plane's API, `picket.control.v1`: the sidecar's `Watch`
//! stream of its pod's view.
//!
//! The Rust code in `gen/` is generated from `proto/` and committed (as
//! linkerd2-proxy-api does), so that building the sidecar needs no protobuf
//! compiler; `tests::generated_code_is_up_to_date` regenerates it and fails
//! when it differs (run with `PICKET_BLESS=1` to rewrite it).

pub mod convert;

/// The generated messages and service code.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    include!("gen/picket.control.v1.rs");
}

#[cfg(test)]
mod tests;
