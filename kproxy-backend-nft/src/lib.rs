//! kproxy's nftables dataplane.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its
//! final shape. See issue 3 ("kproxy-backend-nft") for the plan.
