//! The `kproxy` binary (see issue 4). Not implemented yet.

fn main() {
    eprintln!("kproxy: the binary is not implemented yet; see the README");
    std::process::exit(2);
}
