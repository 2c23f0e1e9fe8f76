//! Command-line flags: every flag upstream kube-proxy v1.34.4 has, parsed
//! as its `pflag` parses them, plus kproxy's own few.
//!
//! - `--name=value` and `--name value`; a boolean takes only `--name` or
//!   `--name=true|false`. `-v 2`, `-v=2` and `-h` work.
//! - `_` and `-` are the same inside a name (`--proxy_mode`), as upstream's
//!   word-separator normalisation.
//! - A list flag (`--nodeport-addresses`, `--ipvs-exclude-cidrs`,
//!   `--feature-gates`) given twice keeps both values; any other keeps the
//!   last.
//! - A value of the wrong type is one line naming the flag, at parse
//!   time, as upstream.
//!
//! Which flags count when `--config` is given is decided in
//! [`crate::config::from_flags`]: as upstream, only the logging flags and
//! `--hostname-override` then change the configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::duration::GoDuration;

/// What a flag's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--name` or `--name=true|false`.
    Bool,
    /// Any text.
    Text,
    /// A 32-bit integer.
    Int32,
    /// A 32-bit float.
    Float32,
    /// A Go duration.
    Duration,
    /// An IP address.
    Ip,
    /// An IP address, or an IP address and port.
    IpPort,
    /// A comma-separated list; repeated flags add to it.
    List,
    /// `Key=true,Other=false`; repeated flags add to it.
    MapStringBool,
    /// A non-negative log level.
    Level,
    /// `--version` or `--version=raw|true|false|vX.Y.Z`.
    Version,
}

/// Where a flag goes when `--config` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Sets a configuration field; ignored when `--config` is given.
    Config,
    /// Counts with or without `--config` (logging, `--hostname-override`,
    /// actions such as `--cleanup`, and kproxy's own flags).
    Always,
}

/// One flag.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The name, without dashes.
    pub name: &'static str,
    /// A one-letter alias (`v`, `h`).
    pub short: Option<char>,
    /// The value's kind.
    pub kind: Kind,
    /// Whether `--config` overrides it.
    pub scope: Scope,
    /// The default, as `--help` shows it (empty for none).
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
    /// Accepted, but has no effect in kproxy: the reason, logged once at
    /// info level when the flag is used.
    pub no_effect: Option<&'static str>,
    /// Deprecated: pflag's message, printed when the flag is used.
    pub deprecated: Option<&'static str>,
}

const fn flag(name: &'static str, kind: Kind, scope: Scope, default: &'static str, help: &'static str) -> Spec {
    Spec { name, short: None, kind, scope, default, help, no_effect: None, deprecated: None }
}

const fn inert(name: &'static str, kind: Kind, scope: Scope, default: &'static str, help: &'static str, why: &'static str) -> Spec {
    Spec { name, short: None, kind, scope, default, help, no_effect: Some(why), deprecated: None }
}

use Kind::*;
use Scope::*;

/// Every flag kproxy accepts: upstream's, in `--help`'s order, then
/// kproxy's own.
pub const SPECS: &[Spec] = &[
    flag("bind-address", Ip, Config, "0.0.0.0", "Overrides kube-proxy's idea of what its node's primary IP is (no socket binds to it)."),
    flag("bind-address-hard-fail", Bool, Config, "", "If true, a server that cannot bind its port makes kproxy exit; otherwise it retries every 5s."),
    inert("boot-id-file", Text, Always, "/proc/sys/kernel/random/boot_id", "Comma-separated list of files to check for boot-id.", "kproxy does not read the boot id"),
    flag("cleanup", Bool, Always, "", "If true, remove every rule any mode of kproxy or kube-proxy installed, then exit."),
    flag("cluster-cidr", Text, Config, "", "The pods' CIDR range (a comma-separated dual-stack pair for dual-stack); used when --detect-local-mode is ClusterCIDR."),
    flag("config", Text, Always, "", "The path to the configuration file."),
    inert("config-sync-period", Duration, Config, "15m0s", "How often configuration from the apiserver is refreshed. Must be greater than 0.", "kproxy's watches do not resync; it is validated only"),
    flag("conntrack-max-per-core", Int32, Config, "32768", "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min)."),
    flag("conntrack-min", Int32, Config, "131072", "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core."),
    flag("conntrack-tcp-be-liberal", Bool, Config, "", "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1."),
    flag("conntrack-tcp-timeout-close-wait", Duration, Config, "1h0m0s", "NAT timeout for TCP connections in the CLOSE_WAIT state."),
    flag("conntrack-tcp-timeout-established", Duration, Config, "24h0m0s", "Idle timeout for established TCP connections (0 to leave as-is)."),
    flag("conntrack-udp-timeout", Duration, Config, "", "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)."),
    flag("conntrack-udp-timeout-stream", Duration, Config, "", "Idle timeout for ASSURED UDP connections (0 to leave as-is)."),
    flag("detect-local-mode", Text, Config, "", "Mode to use to detect local traffic: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix."),
    inert("feature-gates", MapStringBool, Config, "", "A set of key=value pairs for upstream's feature gates.", "kproxy has none of upstream's feature gates"),
    flag("healthz-bind-address", IpPort, Config, "0.0.0.0:10256", "The IP address and port for the health check server to serve on."),
    Spec {
        deprecated: Some("This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead."),
        ..flag("healthz-port", Int32, Always, "10256", "The port to bind the health check server. Use 0 to disable.")
    },
    Spec { short: Some('h'), ..flag("help", Bool, Always, "", "help for kproxy") },
    flag("hostname-override", Text, Always, "", "If non-empty, the name of the Node kproxy runs on (default: the hostname)."),
    flag("init-only", Bool, Always, "", "If true, do the initialization that needs full root privileges (the conntrack sysctls), then exit."),
    flag("iptables-localhost-nodeports", Bool, Config, "true", "If false, NodePorts are not served on localhost (iptables mode and IPv4 only)."),
    flag("iptables-masquerade-bit", Int32, Config, "14", "The bit of the fwmark space marking packets that need SNAT. Must be within [0, 31]."),
    flag("iptables-min-sync-period", Duration, Config, "1s", "The minimum period between rule resyncs (iptables and nftables modes)."),
    flag("iptables-sync-period", Duration, Config, "30s", "How often rules are fully resynced (iptables and nftables modes). Must be greater than 0."),
    flag("ipvs-exclude-cidrs", List, Config, "", "A comma-separated list of CIDRs which the IPVS proxier leaves alone when cleaning up."),
    flag("ipvs-min-sync-period", Duration, Config, "1s", "The minimum period between IPVS rule resyncs."),
    flag("ipvs-scheduler", Text, Config, "", "The IPVS scheduler type when proxy mode is ipvs."),
    flag("ipvs-strict-arp", Bool, Config, "", "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2."),
    flag("ipvs-sync-period", Duration, Config, "30s", "How often IPVS rules are fully resynced. Must be greater than 0."),
    flag("ipvs-tcp-timeout", Duration, Config, "", "The timeout for idle IPVS TCP connections, 0 to leave as-is."),
    flag("ipvs-tcpfin-timeout", Duration, Config, "", "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is."),
    flag("ipvs-udp-timeout", Duration, Config, "", "The timeout for IPVS UDP packets, 0 to leave as-is."),
    flag("kube-api-burst", Int32, Config, "10", "Burst to use while talking with the Kubernetes API server."),
    inert(
        "kube-api-content-type",
        Text,
        Config,
        "application/vnd.kubernetes.protobuf",
        "Content type of requests sent to the API server.",
        "kproxy's API client speaks JSON only",
    ),
    flag("kube-api-qps", Float32, Config, "5", "QPS to use while talking with the Kubernetes API server."),
    flag("kubeconfig", Text, Config, "", "Path to a kubeconfig file (--master overrides its server)."),
    inert("log-flush-frequency", Duration, Always, "5s", "Maximum time between log flushes.", "kproxy writes each log line at once"),
    inert("log-json-info-buffer-size", Text, Always, "0", "[Alpha] Buffer size of info messages in JSON format with split streams.", "kproxy does not split or buffer its logs"),
    inert("log-json-split-stream", Bool, Always, "", "[Alpha] In JSON format, write errors to stderr and info to stdout.", "kproxy does not split or buffer its logs"),
    inert("log-text-info-buffer-size", Text, Always, "0", "[Alpha] Buffer size of info messages in text format with split streams.", "kproxy does not split or buffer its logs"),
    inert("log-text-split-stream", Bool, Always, "", "[Alpha] In text format, write errors to stderr and info to stdout.", "kproxy does not split or buffer its logs"),
    flag("logging-format", Text, Always, "text", "Sets the log format. Permitted formats: \"json\", \"text\"."),
    inert("machine-id-file", Text, Always, "/etc/machine-id,/var/lib/dbus/machine-id", "Comma-separated list of files to check for machine-id.", "kproxy does not read the machine id"),
    flag("masquerade-all", Bool, Config, "", "SNAT all traffic sent via Service cluster IPs."),
    flag("master", Text, Always, "", "The address of the Kubernetes API server (overrides any value in kubeconfig)."),
    flag("metrics-bind-address", IpPort, Config, "127.0.0.1:10249", "The IP address and port for the metrics server to serve on."),
    Spec {
        deprecated: Some("This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead."),
        ..flag("metrics-port", Int32, Always, "10249", "The port to bind the metrics server. Use 0 to disable.")
    },
    flag("nodeport-addresses", List, Config, "", "CIDR ranges holding the node IPs NodePorts are served on, or the single string 'primary'."),
    flag("oom-score-adj", Int32, Config, "-999", "The oom-score-adj value for the kproxy process. Must be within [-1000, 1000]."),
    flag("pod-bridge-interface", Text, Config, "", "A bridge interface name, for --detect-local-mode BridgeInterface."),
    flag("pod-interface-name-prefix", Text, Config, "", "An interface name prefix, for --detect-local-mode InterfaceNamePrefix."),
    inert("profiling", Bool, Config, "", "If true, enables profiling via /debug/pprof.", "kproxy serves no Go profiler"),
    flag("proxy-mode", Text, Config, "iptables", "Which proxy mode to use: 'iptables' (default), 'ipvs', or 'nftables'."),
    inert(
        "show-hidden-metrics-for-version",
        Text,
        Config,
        "",
        "The previous version for which to show hidden metrics (<major>.<minor>).",
        "kproxy has no hidden metrics; the value is validated only",
    ),
    Spec { short: Some('v'), ..flag("v", Level, Always, "0", "Number for the log level verbosity.") },
    flag("version", Version, Always, "", "--version, --version=raw prints version information and quits."),
    flag("vmodule", Text, Always, "", "Comma-separated list of pattern=N settings for file-filtered logging (file names without .rs, globs)."),
    flag("write-config-to", Text, Always, "", "If set, write the effective configuration to this file and exit."),
    // kproxy's own.
    flag("manifests", Text, Always, "", "kproxy: take the cluster state from a directory of YAML manifests instead of an API server."),
    flag("dry-run", Bool, Always, "", "kproxy: print what the first sync would program and exit, without touching the kernel."),
    flag("hand-back", Bool, Always, "", "kproxy: once upstream kube-proxy serves the node, remove kproxy's own nftables tables and exit."),
];

/// The parsed command line: the value of each flag that was given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flags {
    values: BTreeMap<&'static str, String>,
}

/// Why the command line did not parse: one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(pub String);

/// Whether `name` is a kproxy flag, and if so whether it takes a value
/// (it is not a switch).
pub fn takes_value(name: &str) -> Option<bool> {
    spec(name).map(|s| !matches!(s.kind, Kind::Bool | Kind::Version))
}

fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

fn check(spec: &Spec, value: &str) -> Result<(), String> {
    let ok = match spec.kind {
        Bool => matches!(value, "true" | "false" | "1" | "0" | "t" | "f" | "TRUE" | "FALSE" | "True" | "False" | "T" | "F"),
        Text | List => true,
        Int32 => value.parse::<i32>().is_ok(),
        Float32 => value.parse::<f32>().is_ok_and(f32::is_finite),
        Duration => return GoDuration::parse(value).map(|_| ()).map_err(|e| e.to_string()),
        Ip => value.parse::<IpAddr>().is_ok(),
        IpPort => value.is_empty() || value.parse::<IpAddr>().is_ok() || value.parse::<std::net::SocketAddr>().is_ok(),
        MapStringBool => value.split(',').filter(|p| !p.trim().is_empty()).all(|pair| {
            pair.split_once('=').is_some_and(|(k, v)| !k.trim().is_empty() && matches!(v.trim(), "true" | "false"))
        }),
        Level => value.parse::<u32>().is_ok(),
        Version => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not {}", describe(spec.kind)))
    }
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Bool => "true or false",
        Int32 => "a 32-bit integer",
        Float32 => "a number",
        Ip => "an IP address",
        IpPort => "an IP address or IP:port",
        MapStringBool => "a list of key=true|false",
        Level => "a log level (0 or more)",
        Text | List | Duration | Version => "valid",
    }
}

fn true_text(v: &str) -> bool {
    matches!(v, "true" | "1" | "t" | "TRUE" | "True" | "T")
}

impl Flags {
    /// Parses `args` (without the program name). Deprecated flags print
    /// upstream's warning on stderr.
    pub fn parse_from<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, FlagError> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        let mut positional = Vec::new();
        while let Some(arg) = args.next() {
            let (name, inline) = if let Some(long) = arg.strip_prefix("--") {
                if long.is_empty() {
                    positional.extend(args.by_ref());
                    break;
                }
                match long.split_once('=') {
                    Some((n, v)) => (n.replace('_', "-"), Some(v.to_string())),
                    None => (long.replace('_', "-"), None),
                }
            } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
                let mut chars = short.chars();
                let letter = chars.next().unwrap_or_default();
                let rest: String = chars.collect();
                let Some(s) = SPECS.iter().find(|s| s.short == Some(letter)) else {
                    return Err(FlagError(format!("unknown shorthand flag: '{letter}' in -{short}")));
                };
                let inline = match rest.strip_prefix('=') {
                    Some(v) => Some(v.to_string()),
                    None if rest.is_empty() => None,
                    None => Some(rest),
                };
                (s.name.to_string(), inline)
            } else {
                positional.push(arg);
                continue;
            };
            let Some(s) = spec(&name) else {
                return Err(FlagError(format!("unknown flag: --{name}")));
            };
            let value = match (inline, s.kind) {
                (Some(v), _) => v,
                (None, Bool) => "true".into(),
                (None, Version) => "true".into(),
                (None, _) => args.next().ok_or_else(|| FlagError(format!("flag needs an argument: --{name}")))?,
            };
            check(s, &value).map_err(|why| FlagError(format!("invalid argument {value:?} for \"--{name}\" flag: {why}")))?;
            if let Some(message) = s.deprecated {
                eprintln!("Flag --{name} has been deprecated, {message}");
            }
            match (s.kind, flags.values.get_mut(s.name)) {
                (List | MapStringBool, Some(previous)) if !value.is_empty() => {
                    previous.push(',');
                    previous.push_str(&value);
                }
                _ => {
                    flags.values.insert(s.name, value);
                }
            }
        }
        if !positional.is_empty() {
            return Err(FlagError(format!("\"kproxy\" does not take any arguments, got {positional:?}")));
        }
        Ok(flags)
    }

    /// Parses the process's own arguments.
    pub fn from_env() -> Result<Flags, FlagError> {
        Flags::parse_from(std::env::args().skip(1))
    }

    /// Whether `name` was given.
    pub fn changed(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The flags that were given, by name, with their text.
    pub fn given(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// A text flag's value, when given.
    pub fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// A boolean flag: true only when given as true.
    pub fn on(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|v| true_text(v))
    }

    /// A boolean flag's value, when given.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.values.get(name).map(|v| true_text(v))
    }

    /// A 32-bit integer flag's value, when given (checked at parse time).
    pub fn int32(&self, name: &str) -> Option<i32> {
        self.values.get(name).and_then(|v| v.parse().ok())
    }

    /// A float flag's value, when given.
    pub fn float(&self, name: &str) -> Option<f64> {
        self.values.get(name).and_then(|v| v.parse::<f32>().ok()).map(f64::from)
    }

    /// A duration flag's value, when given.
    pub fn duration(&self, name: &str) -> Option<GoDuration> {
        self.values.get(name).and_then(|v| GoDuration::parse(v).ok())
    }

    /// A list flag's items, when given (`""` gives an empty list).
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        self.values.get(name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
    }

    /// `--feature-gates` as a map, when given.
    pub fn map(&self, name: &str) -> Option<BTreeMap<String, bool>> {
        self.values.get(name).map(|v| {
            v.split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim() == "true"))
                .collect()
        })
    }

    /// The flags given that have no effect in kproxy, with the reason.
    pub fn without_effect(&self) -> Vec<(&'static str, &'static str)> {
        self.values.keys().filter_map(|n| spec(n).and_then(|s| s.no_effect.map(|why| (s.name, why)))).collect()
    }

    /// The configuration flags given alongside `--config` (ignored, as
    /// upstream).
    pub fn overridden_by_file(&self) -> Vec<&'static str> {
        if !self.changed("config") {
            return Vec::new();
        }
        self.values.keys().filter(|n| spec(n).is_some_and(|s| s.scope == Config)).copied().collect()
    }
}

/// `--help`'s text: every flag, its value type and its default.
pub fn help() -> String {
    let mut out = String::from(
        "kproxy: a Kubernetes service proxy, a drop-in replacement for kube-proxy.\n\
         It watches Services and EndpointSlices and programs this node's nftables,\n\
         iptables or IPVS so that Service traffic reaches a ready backend.\n\n\
         Usage:\n  kproxy [flags]\n\nFlags:\n",
    );
    for s in SPECS {
        let kind = match s.kind {
            Bool => "",
            Text => " string",
            Int32 => " int32",
            Float32 => " float32",
            Duration => " duration",
            Ip => " ip",
            IpPort => " ipport",
            List => " strings",
            MapStringBool => " mapStringBool",
            Level => " Level",
            Version => " version[=true]",
        };
        let short = s.short.map(|c| format!("-{c}, ")).unwrap_or_else(|| "    ".into());
        let left = format!("  {short}--{}{kind}", s.name);
        let mut line = format!("{left:<50} {}", s.help);
        if !s.default.is_empty() {
            let shown = if matches!(s.kind, Text) { format!("{:?}", s.default) } else { s.default.to_string() };
            let _ = write!(line, " (default {shown})");
        }
        if let Some(why) = s.no_effect {
            let _ = write!(line, " [no effect in kproxy: {why}]");
        }
        if s.deprecated.is_some() {
            let _ = write!(line, " (DEPRECATED)");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, FlagError> {
        Flags::parse_from(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn pflag_forms() {
        let f = parse(&["--proxy-mode", "ipvs", "--masquerade-all", "--conntrack-min=7", "-v=3", "--cleanup=false", "--ipvs_strict_arp"]).unwrap();
        assert_eq!(f.text("proxy-mode").as_deref(), Some("ipvs"));
        assert!(f.on("masquerade-all") && f.on("ipvs-strict-arp") && !f.on("cleanup"));
        assert_eq!(f.int32("conntrack-min"), Some(7));
        assert_eq!(f.text("v").as_deref(), Some("3"));
        assert_eq!(parse(&["-v", "4"]).unwrap().text("v").as_deref(), Some("4"));
        assert_eq!(parse(&["-v4"]).unwrap().text("v").as_deref(), Some("4"));
        let lists = parse(&["--nodeport-addresses=10.0.0.0/8", "--nodeport-addresses", "fd00::/8"]).unwrap();
        assert_eq!(lists.list("nodeport-addresses").unwrap(), ["10.0.0.0/8", "fd00::/8"]);
    }

    #[test]
    fn bad_command_lines_are_one_line_naming_the_flag() {
        for (args, expected) in [
            (&["--oom-score-adj=x"][..], "invalid argument \"x\" for \"--oom-score-adj\" flag"),
            (&["--bind-address=1.2.3"], "--bind-address"),
            (&["--healthz-bind-address=1.2.3.4:99999"], "--healthz-bind-address"),
            (&["--ipvs-tcp-timeout=99999999999999999999h"], "time: invalid duration"),
            (&["--masquerade-all", "false"], "does not take any arguments"),
            (&["--no-such-flag"], "unknown flag: --no-such-flag"),
            (&["--config"], "flag needs an argument: --config"),
            (&["--feature-gates=Foo=maybe"], "--feature-gates"),
        ] {
            let err = parse(args).unwrap_err().0;
            assert!(err.contains(expected) && !err.contains('\n'), "{args:?}: {err}");
        }
    }

    #[test]
    fn only_configuration_flags_yield_to_the_file() {
        let f = parse(&["--config=c.yaml", "--proxy-mode=ipvs", "--hostname-override=n", "-v=2", "--master=https://10.0.0.1:6443"]).unwrap();
        assert_eq!(f.overridden_by_file(), ["proxy-mode"]);
        assert!(parse(&["--proxy-mode=ipvs"]).unwrap().overridden_by_file().is_empty());
    }

    #[test]
    fn help_lists_every_flag_with_upstream_defaults() {
        let text = help();
        for s in SPECS {
            assert!(text.contains(&format!("--{} ", s.name)) || text.contains(&format!("--{}\n", s.name)) || text.contains(&format!("--{}  ", s.name)), "{}", s.name);
        }
        assert!(text.contains("--proxy-mode string") && text.contains("(default \"iptables\")"), "{text}");
    }
}
