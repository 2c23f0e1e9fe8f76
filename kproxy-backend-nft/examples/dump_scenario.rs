//! Prints the nftables table kproxy renders for one shared scenario.
//! `cargo run -p kproxy-backend-nft --example dump_scenario -- cluster_ip`
fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "cluster_ip".into());
    let scenario = kproxy_core::oracle::scenarios::all().into_iter().find(|s| s.name == name).expect("unknown scenario");
    let rendered = kproxy_backend_nft::render(&scenario.state(), &scenario.config);
    print!("{}", kproxy_backend_nft::text::table_block("kproxy-a", &rendered.ruleset));
}
