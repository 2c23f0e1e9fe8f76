//! Whether this machine can run the nftables backend, checked at start so
//! a missing piece is one clear line instead of a failed first sync:
//! - the `nft` binary, version 1.0.1 or later (as upstream's knftables
//!   requires);
//! - a kernel of 5.13 or later (upstream's floor for nftables mode);
//! - permission to program nftables here (`nft --check` of a table).

use super::{KernelError, NftCli};

/// `nft` must be at least this version.
pub const MIN_NFT: (u32, u32, u32) = (1, 0, 1);
/// The kernel must be at least this release.
pub const MIN_KERNEL: (u32, u32) = (5, 13);

/// Reads `X.Y.Z` (missing parts are 0) at the start of `text`.
fn version_prefix(text: &str) -> Option<(u32, u32, u32)> {
    let numeric: String = text.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// The version in `nft --version` output (`nftables v1.0.6 (Lester Gooch #5)`).
pub fn parse_nft_version(output: &str) -> Option<(u32, u32, u32)> {
    version_prefix(output.trim().strip_prefix("nftables v")?)
}

/// (major, minor) of a kernel release (`6.1.0-18-amd64`).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    version_prefix(release.trim()).map(|(a, b, _)| (a, b))
}

/// Checks `nft`, the kernel release in `kernel_release` (the contents of
/// `/proc/sys/kernel/osrelease`) and permission; the error says what is
/// missing.
pub async fn check_support(cli: &NftCli, kernel_release: &str) -> Result<(), String> {
    let out = cli.run(&["--version"], None).await.map_err(|e| match e {
        KernelError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "nftables mode needs the `nft` command (package nftables), which is not in PATH".to_string()
        }
        other => format!("nftables mode cannot run `nft --version`: {other}"),
    })?;
    let version = parse_nft_version(&out).ok_or_else(|| format!("cannot read the nft version from {:?}", out.trim()))?;
    if version < MIN_NFT {
        return Err(format!(
            "nft {}.{}.{} is too old: nftables mode needs nft {}.{}.{} or later",
            version.0, version.1, version.2, MIN_NFT.0, MIN_NFT.1, MIN_NFT.2
        ));
    }
    let kernel = parse_kernel_release(kernel_release).ok_or_else(|| format!("cannot read the kernel release from {:?}", kernel_release.trim()))?;
    if kernel < MIN_KERNEL {
        return Err(format!("kernel {}.{} is too old: nftables mode needs {}.{} or later", kernel.0, kernel.1, MIN_KERNEL.0, MIN_KERNEL.1));
    }
    cli.run(&["--check", "add", "table", "ip", "kproxy-support-check"], None)
        .await
        .map_err(|e| format!("nftables cannot be programmed here: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_nft_version("nftables v1.0.6 (Lester Gooch #5)\n"), Some((1, 0, 6)));
        assert_eq!(parse_nft_version("nftables v0.9.3 (Topsy)"), Some((0, 9, 3)));
        assert_eq!(parse_nft_version("nftables v1.1 (x)"), Some((1, 1, 0)));
        assert_eq!(parse_nft_version("iptables v1.8.9"), None);
        assert_eq!(parse_kernel_release("6.18.44-cloud\n"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert!(parse_nft_version("nftables v1.0.0 (x)").unwrap() < MIN_NFT);
        assert!(parse_kernel_release("5.10.0").unwrap() < MIN_KERNEL);
    }
}
