//! kproxy's iptables dataplane.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its
//! final shape. See issue 6 ("kproxy-backend-iptables") for the plan.
