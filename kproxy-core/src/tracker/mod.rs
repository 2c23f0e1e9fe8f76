//! Change tracking: events in, (previous, current) pairs out, applied to the
//! maps at sync time.

mod change;
mod endpoints;
mod services;

pub use change::{Change, ChangeTracker};
pub use endpoints::{EndpointsChangeTracker, EndpointsUpdate};
pub use services::{ServiceChangeTracker, ServiceUpdate};
pub(crate) use services::key_of as service_key;

#[cfg(test)]
mod tests;
