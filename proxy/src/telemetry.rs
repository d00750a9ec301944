//! Logging: `tracing` to stderr, filtered by `PICKET_LOG` (else `RUST_LOG`,
//! else info), as plain text or JSON. The filter can be changed at run time
//! through the returned handle (the local admin server's `PUT /log-level`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
pub type LogHandle = reload::Handle<EnvFilter, Registry>;

/// Installs the global subscriber once; JSON lines when `json`.
pub fn init(json: bool) -> Option<LogHandle> {
    let level = std::env::var("PICKET_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(level));
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

/// Sets a new filter (`debug`, `picket=trace,info`, ...).
pub fn set_level(handle: &LogHandle, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter.trim()).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())
}
