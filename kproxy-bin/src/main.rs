//! The `kproxy` binary: a drop-in kube-proxy that follows an API server
//! (`--kubeconfig`, in-cluster config), or a directory of manifests in
//! standalone mode (`--manifests`).

mod config;
mod flags;
mod interfaces;
mod manifests;
mod metrics;
mod observer;
mod proxy;
mod run;
mod servers;
mod service_cidrs;
mod settings;
mod standalone;
mod sysctls;
mod takeover;
mod watch;
mod watched;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let flags = flags::Flags::parse();
    // The file's `logging` section counts too (flags win); any other
    // problem with the file is reported once logging is up.
    let file_logging = flags
        .config
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok().and_then(|text| config::parse(p, &text).ok()))
        .and_then(|c| c.logging)
        .unwrap_or_default();
    let format = flags.logging_format.clone().or(file_logging.format).unwrap_or_else(|| "text".into());
    if format != "text" && format != "json" {
        eprintln!("kproxy: unknown logging format {format:?} (expected text or json)");
        return ExitCode::FAILURE;
    }
    let level = match flags.verbosity.or(file_logging.verbosity).unwrap_or(0) {
        0..=1 => "info",
        2..=3 => "debug",
        _ => "trace",
    };
    // kube's client logs every failed request at error level; kproxy's own
    // warnings already say what failed and that it retries.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},kube_client=off")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
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
