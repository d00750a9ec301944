//! Logging for every Picket binary: `tracing` to stderr, filtered by
//! `PICKET_LOG` (else `RUST_LOG`, else info), as plain text or JSON. The
//! filter can be changed at run time through the returned handle (the
//! sidecar's `PUT /log-level`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
pub type LogHandle = reload::Handle<EnvFilter, Registry>;

/// The filter from the environment: `PICKET_LOG`, else `RUST_LOG`, else `info`.
pub fn filter_from_env() -> String {
    std::env::var(crate::env::LOG)
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into())
}

/// Installs the global subscriber once; JSON lines when `json`. Returns the
/// reload handle, or `None` when a subscriber was already installed.
pub fn init(json: bool) -> Option<LogHandle> {
    let (filter, handle) = reload::Layer::new(EnvFilter::new(filter_from_env()));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_ansi(false).with_writer(std::io::stderr))
            .try_init()
    };
    installed.ok().map(|()| handle)
}

/// Checks a filter (`debug`, `picket=trace,info`, ...) without applying it.
pub fn check_filter(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(filter.trim()).map_err(|e| e.to_string())
}

/// Sets a new filter on the running process.
pub fn set_level(handle: &LogHandle, filter: &str) -> Result<(), String> {
    handle
        .reload(check_filter(filter)?)
        .map_err(|e| e.to_string())
}
