//! The cluster's ServiceCIDRs (`networking.k8s.io/v1` ServiceCIDR objects)
//! as one list of ranges, as upstream hands them to its proxiers: every
//! range of every object, both families. nftables mode drops traffic to the
//! addresses of these ranges that no Service holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kproxy_core::runner::Update;

/// The ranges of one ServiceCIDR object; a range that does not parse is
/// named in the error (the API server validates them, a manifest may not).
pub fn ranges_of(object: &ServiceCIDR) -> Result<Vec<IpNet>, String> {
    let name = object.metadata.name.as_deref().unwrap_or("");
    let texts = object.spec.as_ref().and_then(|s| s.cidrs.as_ref()).map(Vec::as_slice).unwrap_or_default();
    texts
        .iter()
        .map(|t| t.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("ServiceCIDR {name:?}: {t:?} is not a CIDR")))
        .collect()
}

/// Every object's ranges, by object name; the union is what proxiers get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCidrs {
    by_object: BTreeMap<String, Vec<IpNet>>,
}

impl ServiceCidrs {
    /// Records an object's ranges (added or changed); returns the update
    /// to send if the union changed. An object with a bad range is logged
    /// and counts as having none.
    pub fn upsert(&mut self, object: &ServiceCIDR) -> Option<Update> {
        let ranges = ranges_of(object).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring a ServiceCIDR");
            Vec::new()
        });
        let before = self.union();
        self.by_object.insert(object.metadata.name.clone().unwrap_or_default(), ranges);
        self.changed_from(before)
    }

    /// Forgets a deleted object; returns the update if the union changed.
    pub fn delete(&mut self, object: &ServiceCIDR) -> Option<Update> {
        let before = self.union();
        self.by_object.remove(object.metadata.name.as_deref().unwrap_or(""));
        self.changed_from(before)
    }

    /// Every range of every object, sorted, without repeats.
    pub fn union(&self) -> Vec<IpNet> {
        let all: BTreeSet<IpNet> = self.by_object.values().flatten().copied().collect();
        all.into_iter().collect()
    }

    fn changed_from(&self, before: Vec<IpNet>) -> Option<Update> {
        let now = self.union();
        (now != before).then(|| Update::ServiceCidrs(Arc::new(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::ServiceCIDRSpec;

    fn object(name: &str, cidrs: &[&str]) -> ServiceCIDR {
        let mut o = ServiceCIDR::default();
        o.metadata.name = Some(name.into());
        o.spec = Some(ServiceCIDRSpec { cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()) });
        o
    }

    fn sent(u: Option<Update>) -> Option<Vec<String>> {
        u.map(|u| match u {
            Update::ServiceCidrs(c) => c.iter().map(ToString::to_string).collect(),
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn the_union_is_sent_when_it_changes_and_only_then() {
        let mut s = ServiceCidrs::default();
        let default = object("kubernetes", &["10.96.0.0/12", "fd00::/108"]);
        assert_eq!(sent(s.upsert(&default)), Some(vec!["10.96.0.0/12".into(), "fd00::/108".into()]));
        assert_eq!(sent(s.upsert(&default)), None, "same object again");
        let extra = object("extra", &["10.200.0.0/16"]);
        assert_eq!(sent(s.upsert(&extra)), Some(vec!["10.96.0.0/12".into(), "10.200.0.0/16".into(), "fd00::/108".into()]));
        // The same range in two objects stays while either holds it.
        let twin = object("twin", &["10.200.0.0/16"]);
        assert_eq!(sent(s.upsert(&twin)), None);
        assert_eq!(sent(s.delete(&extra)), None);
        assert_eq!(sent(s.delete(&twin)), Some(vec!["10.96.0.0/12".into(), "fd00::/108".into()]));
        assert_eq!(sent(s.delete(&default)), Some(vec![]), "the last one gone: nothing dropped any more");
    }

    #[test]
    fn a_bad_range_is_named_and_costs_only_its_object() {
        let bad = object("bad", &["10.0.0.0/33"]);
        assert_eq!(ranges_of(&bad), Err(r#"ServiceCIDR "bad": "10.0.0.0/33" is not a CIDR"#.to_string()));
        let mut s = ServiceCidrs::default();
        s.upsert(&object("good", &["10.96.0.0/12"]));
        assert_eq!(sent(s.upsert(&bad)), None);
        assert_eq!(s.union().len(), 1);
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(ranges_of(&object("x", &["10.96.0.1/12"])), Ok(vec!["10.96.0.0/12".parse().unwrap()]));
    }
}
