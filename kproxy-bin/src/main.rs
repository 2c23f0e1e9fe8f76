//! The `kproxy` binary: a drop-in kube-proxy that follows an API server
//! (`--kubeconfig`, in-cluster config), or a directory of manifests in
//! standalone mode (`--manifests`).

mod api_client;
mod config;
mod diagnose_cmd;
mod events;
mod flags;
mod logging;
mod metrics;
mod metrics_process;
mod observer;
mod process;
mod proxy;
#[cfg(test)]
mod readme_check;
mod run;
mod servers;
mod settings;
mod sysctls;
mod takeover;
mod trace_cmd;
mod watch;

use std::process::ExitCode;

/// The version `--version` prints, with the kube-proxy release kproxy
/// matches.
const VERSION: &str = concat!("kproxy v", env!("CARGO_PKG_VERSION"), " (compatible with kube-proxy v1.34.4)");

/// Prints each line of `problem` as `kproxy: <line>` on stderr.
fn fail(problem: &str) -> ExitCode {
    for line in problem.lines() {
        eprintln!("kproxy: {line}");
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("trace") => return trace_cmd::main(&args[1..]),
        Some("diagnose") => return diagnose_cmd::main(&args[1..]),
        _ => {}
    }
    let flags = match flags::Flags::from_env() {
        Ok(f) => f,
        Err(e) => return fail(&format!("{e} (see kproxy --help)")),
    };
    if flags.on("help") {
        print!("{}", flags::help());
        return ExitCode::SUCCESS;
    }
    match flags.text("version").as_deref() {
        None | Some("false") => {}
        Some("raw") => {
            println!("version.Info{{GitVersion:\"v{}\", Compatible:\"v1.34.4\"}}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        // `--version=vX.Y.Z` sets the reported version upstream; kproxy
        // reports its own and carries on.
        Some(v) if v.starts_with('v') => {}
        Some(_) => {
            println!("{VERSION}");
            return ExitCode::SUCCESS;
        }
    }
    let effective = match config::effective(&flags) {
        Ok(e) => e,
        Err(errors) => return fail(&errors.to_string()),
    };
    let log = effective.config.logging.clone().unwrap_or_default();
    let format = if log.format.as_deref() == Some("json") { logging::Format::Json } else { logging::Format::Text };
    logging::init(format, log.verbosity.unwrap_or(0), logging::Vmodule::from_config(log.vmodule.as_ref()));
    // Upstream prints its flags at -v=1.
    if log.verbosity.unwrap_or(0) >= 1 {
        for (name, value) in flags.given() {
            tracing::info!("FLAG: --{name}={value:?}");
        }
    }
    for note in &effective.notes {
        tracing::info!("{note}");
    }
    for warning in &effective.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run::run(flags, effective)) {
        Ok(()) => ExitCode::SUCCESS,
        // One line per problem, never a backtrace.
        Err(e) => fail(&format!("{e:#}")),
    }
}
