//! Prints the `nft -f` transaction that creates kproxy's table for one
//! shared scenario (`--base` includes the hooks).
//! `cargo run -p kproxy-backend-nft --example render_tx -- cluster_ip`
fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "cluster_ip".into());
    let scenario = kproxy_oracle::scenarios::all().into_iter().find(|s| s.name == name).expect("unknown scenario");
    let rendered = kproxy_backend_nft::render(&scenario.state(), &scenario.config);
    let mut tx = kproxy_backend_nft::transaction::Transaction::new(scenario.family);
    tx.create("kproxy-a", &rendered.ruleset, true);
    print!("{}", tx.to_nft());
}
