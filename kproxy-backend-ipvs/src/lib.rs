//! kproxy's IPVS dataplane.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its
//! final shape. See issue 7 ("kproxy-backend-ipvs") for the plan.
