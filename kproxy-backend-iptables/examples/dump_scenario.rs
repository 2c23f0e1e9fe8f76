//! Prints the `iptables-restore` input kproxy writes for a shared
//! scenario (no root needed):
//!
//! ```text
//! cargo run -p kproxy-backend-iptables --example iptables_dump_scenario -- cluster_ip
//! ```

use kproxy_backend_iptables::render::{jumps, Renderer};
use kproxy_backend_iptables::restore;
use kproxy_oracle::scenarios;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "cluster_ip".into());
    let all = scenarios::all();
    let Some(scenario) = all.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        eprintln!("no scenario {name:?}; one of: {}", names.join(", "));
        std::process::exit(2);
    };
    print!("{}", restore::full(&Renderer::of(&scenario.state(), &scenario.config), &Default::default(), &jumps()));
}
