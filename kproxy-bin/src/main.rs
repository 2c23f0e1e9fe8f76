//! The `kproxy` binary: a drop-in kube-proxy that follows an API server
//! (`--kubeconfig`, in-cluster config), or a directory of manifests in
//! standalone mode (`--manifests`).

mod config;
mod flags;
mod manifests;
mod metrics;
mod observer;
mod proxy;
mod run;
mod servers;
mod settings;
mod standalone;
mod sysctls;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let flags = flags::Flags::parse();
    let level = match flags.verbosity.unwrap_or(0) {
        0..=1 => "info",
        2..=3 => "debug",
        _ => "trace",
    };
    // kube's client logs every failed request at error level; kproxy's own
    // warnings already say what failed and that it retries.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},kube_client=off")));
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
