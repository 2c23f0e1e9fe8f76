//! Prints the nftables table kproxy renders for one shared scenario.
//! `cargo run -p kproxy-backend-nft --example dump_scenario -- cluster_ip`
fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "cluster_ip".into());
    let all = kproxy_oracle::scenarios::all();
    let Some(scenario) = all.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        eprintln!("dump_scenario: unknown scenario {name:?}; the scenarios are: {}", names.join(", "));
        std::process::exit(2);
    };
    let rendered = kproxy_backend_nft::render(&scenario.state(), &scenario.config);
    print!("{}", kproxy_backend_nft::text::table_block("kproxy-a", &rendered.ruleset));
}
