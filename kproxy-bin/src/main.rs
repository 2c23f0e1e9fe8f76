//! The `kproxy` binary: a drop-in kube-proxy (work in progress, see the
//! README), with a standalone mode that reads a directory of manifests.

mod config;
mod flags;
mod manifests;
mod metrics;
mod observer;
mod run;
mod servers;
mod settings;
mod sysctls;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let flags = flags::Flags::parse();
    let level = match flags.verbosity.unwrap_or(0) {
        0..=1 => "info",
        2..=3 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if flags.logging_format.as_deref() == Some("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem, never a backtrace.
            eprintln!("kproxy: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
