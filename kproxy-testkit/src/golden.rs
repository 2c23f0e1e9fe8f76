//! Golden files: rule text compared with a checked-in file, rewritten with
//! `UPDATE_GOLDEN=1` after the diff is read.

/// Compares `text` with the file at `path`; with `UPDATE_GOLDEN` set,
/// writes it instead. Panics at the first differing line.
pub fn check_golden(name: &str, path: &str, text: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, text).expect("write golden file");
        return;
    }
    let golden = std::fs::read_to_string(path).unwrap_or_else(|_| panic!("missing {path}; run with UPDATE_GOLDEN=1"));
    if golden != text {
        let first = golden.lines().zip(text.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!("{name}: rendered rules differ from {path} at line {}:\n  golden:   {:?}\n  rendered: {:?}", first + 1, golden.lines().nth(first), text.lines().nth(first));
    }
}
