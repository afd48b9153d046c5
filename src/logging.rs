//! Where logs go: stderr (stdout carries a command's output), through the progress bars so a
//! log line never tears one.

/// Installs the subscriber. `MANANERA_LOG` or `RUST_LOG` set the filter, default `info`.
pub fn init() {
    let filter = std::env::var("MANANERA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::commands::progress::LogWriter)
        // Colours only for a person at a terminal, not for journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
