//! The typed rule model: every rule kproxy writes is a [`Rule`] of typed
//! [`Match`]es and a [`Target`], rendered to `iptables-restore` arguments
//! by [`Rule::args`] and parsed back by [`Rule::parse`], so the fake
//! kernel and the tracer work on exactly what the kernel would receive.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use kproxy_core::{IpFamily, Protocol};

/// A conntrack state of `-m conntrack --ctstate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CtState {
    /// The first packet of a connection.
    New,
    /// A packet of a known connection.
    Established,
    /// A packet related to a known connection (ICMP errors).
    Related,
    /// A packet conntrack could not place.
    Invalid,
    /// A packet of a connection whose destination was rewritten.
    Dnat,
}

impl CtState {
    fn name(self) -> &'static str {
        match self {
            CtState::New => "NEW",
            CtState::Established => "ESTABLISHED",
            CtState::Related => "RELATED",
            CtState::Invalid => "INVALID",
            CtState::Dnat => "DNAT",
        }
    }
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// `-m comment --comment TEXT`.
    Comment(String),
    /// `-m nfacct --nfacct-name NAME`: counts packets, always matches
    /// (upstream's iptables mode counts dropped INVALID packets so).
    Nfacct(String),
    /// `-p PROTO -m PROTO` (needed before a port match).
    Protocol(Protocol),
    /// `[!] -s NET`.
    Source(IpNet, bool),
    /// `[!] -d NET`.
    Destination(IpNet, bool),
    /// `--dport PORT` (after [`Match::Protocol`]).
    DestinationPort(u16),
    /// `[!] -i NAME` (`NAME+` matches a prefix).
    InInterface(String, bool),
    /// `-m addrtype [!] --src-type LOCAL`.
    SourceLocal(bool),
    /// `-m addrtype [!] --dst-type LOCAL`.
    DestinationLocal(bool),
    /// `-m mark [!] --mark MARK/MARK`.
    Mark(u32, bool),
    /// `-m conntrack [!] --ctstate STATES`.
    CtState(Vec<CtState>, bool),
    /// `-m statistic --mode random --probability P`, P written with ten
    /// decimals as upstream does.
    Probability(String),
    /// `-m recent --name NAME --mask ALL-ONES --rsource --rcheck --seconds
    /// T --reap`: the source was sent to this endpoint within T seconds.
    RecentCheck {
        /// The list's name (the endpoint chain's).
        name: String,
        /// The affinity timeout.
        seconds: u32,
        /// IPv6 (a /128 mask) or IPv4 (/32).
        v6: bool,
    },
    /// `-m set [!] --match-set NAME FLAGS`: the packet's fields named by
    /// FLAGS (`dst`, `dst,dst`, `dst,dst,src`) are in the ipset NAME (the
    /// IPVS backend's rules; the iptables backend writes none).
    Set {
        /// The ipset's name.
        name: String,
        /// Which packet fields, in the set's dimension order.
        flags: String,
        /// `!`: not in the set.
        negated: bool,
    },
    /// `-m ipvs --vaddr ADDR --vproto PROTO --vport PORT`: IPVS took the
    /// packet at this virtual server (the IPVS backend's node-access
    /// filter; the original destination is gone by filter OUTPUT).
    IpvsVirtual {
        /// The virtual address.
        addr: IpAddr,
        /// The virtual server's protocol.
        protocol: Protocol,
        /// The virtual port.
        port: u16,
    },
    /// `-m recent --name NAME --mask ALL-ONES --rsource --set`: remember
    /// the source for this endpoint.
    RecentSet {
        /// The list's name.
        name: String,
        /// IPv6 or IPv4.
        v6: bool,
    },
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `-j CHAIN`.
    Jump(String),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT`.
    Reject,
    /// `-j DNAT --to-destination ADDR`.
    Dnat(SocketAddr),
    /// `-j MARK --or-mark M`.
    OrMark(u32),
    /// `-j MARK --xor-mark M`.
    XorMark(u32),
    /// `-j MASQUERADE --random-fully`.
    Masquerade,
    /// No `-j` at all: the rule only counts its packets (upstream writes
    /// one in each load-balancer firewall chain, as a comment).
    Nothing,
}

/// One rule of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The matches, all of which must hold.
    pub matches: Vec<Match>,
    /// What happens to a matching packet.
    pub target: Target,
}

/// Upstream's probability for rule `i` of `n` endpoint rules:
/// 1/(n-i) with ten decimals.
pub fn probability(i: usize, n: usize) -> String {
    format!("{:.10}", 1.0 / (n - i) as f64)
}

fn mask(v6: bool) -> &'static str {
    if v6 {
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    } else {
        "255.255.255.255"
    }
}

fn net(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn bang(negated: bool) -> &'static str {
    if negated {
        "! "
    } else {
        ""
    }
}

/// Quotes a comment for iptables-restore: double quotes, with quotes,
/// backslashes and control characters (which the restore parser would
/// read as syntax) replaced, cut to the 255 bytes the comment match holds.
fn quote(text: &str) -> String {
    let mut clean = String::new();
    for c in text.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c }) {
        if clean.len() + c.len_utf8() > 255 {
            break;
        }
        clean.push(c);
    }
    format!("\"{clean}\"")
}

impl Rule {
    /// A rule.
    pub fn new(matches: Vec<Match>, target: Target) -> Self {
        Rule { matches, target }
    }

    /// The rule's arguments after `-A CHAIN`, as iptables-restore reads them.
    pub fn args(&self) -> String {
        let mut s = String::new();
        for m in &self.matches {
            if !s.is_empty() {
                s.push(' ');
            }
            match m {
                Match::Comment(c) => write!(s, "-m comment --comment {}", quote(c)),
                Match::Nfacct(name) => write!(s, "-m nfacct --nfacct-name {name}"),
                Match::Protocol(p) => {
                    let p = crate::names::protocol(*p);
                    write!(s, "-p {p} -m {p}")
                }
                Match::Source(n, neg) => write!(s, "{}-s {}", bang(*neg), net(n)),
                Match::Destination(n, neg) => write!(s, "{}-d {}", bang(*neg), net(n)),
                Match::DestinationPort(p) => write!(s, "--dport {p}"),
                Match::InInterface(i, neg) => write!(s, "{}-i {i}", bang(*neg)),
                Match::SourceLocal(neg) => write!(s, "-m addrtype {}--src-type LOCAL", bang(*neg)),
                Match::DestinationLocal(neg) => write!(s, "-m addrtype {}--dst-type LOCAL", bang(*neg)),
                Match::Mark(m, neg) => write!(s, "-m mark {}--mark {m:#x}/{m:#x}", bang(*neg)),
                Match::CtState(states, neg) => {
                    let names: Vec<&str> = states.iter().map(|c| c.name()).collect();
                    write!(s, "-m conntrack {}--ctstate {}", bang(*neg), names.join(","))
                }
                Match::Probability(p) => write!(s, "-m statistic --mode random --probability {p}"),
                Match::RecentCheck { name, seconds, v6 } => {
                    write!(s, "-m recent --name {name} --mask {} --rsource --rcheck --seconds {seconds} --reap", mask(*v6))
                }
                Match::RecentSet { name, v6 } => write!(s, "-m recent --name {name} --mask {} --rsource --set", mask(*v6)),
                Match::Set { name, flags, negated } => write!(s, "-m set {}--match-set {name} {flags}", bang(*negated)),
                Match::IpvsVirtual { addr, protocol, port } => {
                    let plen = if addr.is_ipv4() { 32 } else { 128 };
                    write!(s, "-m ipvs --vaddr {addr}/{plen} --vproto {} --vport {port}", crate::names::protocol(*protocol))
                }
            }
            .expect("writing to a String");
        }
        if !s.is_empty() && self.target != Target::Nothing {
            s.push(' ');
        }
        match &self.target {
            Target::Nothing => Ok(()),
            Target::Jump(c) => write!(s, "-j {c}"),
            Target::Accept => write!(s, "-j ACCEPT"),
            Target::Drop => write!(s, "-j DROP"),
            Target::Return => write!(s, "-j RETURN"),
            Target::Reject => write!(s, "-j REJECT"),
            Target::Dnat(a) => write!(s, "-j DNAT --to-destination {a}"),
            Target::OrMark(m) => write!(s, "-j MARK --or-mark {m:#x}"),
            Target::XorMark(m) => write!(s, "-j MARK --xor-mark {m:#x}"),
            Target::Masquerade => write!(s, "-j MASQUERADE --random-fully"),
        }
        .expect("writing to a String");
        s
    }

    /// Parses what [`Rule::args`] writes (the fake kernel's reader). Fails
    /// on anything else, naming the first token it did not understand.
    pub fn parse(text: &str, family: IpFamily) -> Result<Rule, String> {
        let tokens = tokenize(text)?;
        let mut t = tokens.iter().map(String::as_str).peekable();
        let mut matches = Vec::new();
        let mut target = None;
        let num = |s: Option<&str>, what: &str| -> Result<u32, String> {
            let s = s.ok_or_else(|| format!("{what}: missing value"))?;
            match s.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .map_err(|_| format!("{what}: bad number {s:?}"))
        };
        let ipnet = |s: Option<&str>| -> Result<IpNet, String> {
            let s = s.ok_or("address: missing value")?;
            s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| format!("bad address {s:?}"))
        };
        while let Some(tok) = t.next() {
            let neg = tok == "!";
            let tok = if neg { t.next().ok_or("dangling !")? } else { tok };
            match tok {
                "-m" => match t.next() {
                    // iptables-save names the protocol's module before a
                    // port match (`-p tcp -m tcp --dport 80`); the port
                    // match itself follows.
                    Some("tcp" | "udp" | "sctp") => {}
                    Some("nfacct") => {
                        expect(&mut t, "--nfacct-name")?;
                        matches.push(Match::Nfacct(t.next().ok_or("nfacct: missing name")?.to_string()));
                    }
                    Some("comment") => {
                        expect(&mut t, "--comment")?;
                        matches.push(Match::Comment(t.next().ok_or("comment: missing text")?.to_string()));
                    }
                    Some("addrtype") => {
                        let neg = t.next_if_eq(&"!").is_some();
                        match t.next() {
                            Some("--src-type") => matches.push(Match::SourceLocal(neg)),
                            Some("--dst-type") => matches.push(Match::DestinationLocal(neg)),
                            other => return Err(format!("addrtype: unexpected {other:?}")),
                        }
                        expect(&mut t, "LOCAL")?;
                    }
                    Some("mark") => {
                        let neg = t.next_if_eq(&"!").is_some();
                        expect(&mut t, "--mark")?;
                        let v = t.next().ok_or("mark: missing value")?;
                        let (value, _) = v.split_once('/').ok_or("mark: expected VALUE/MASK")?;
                        matches.push(Match::Mark(num(Some(value), "mark")?, neg));
                    }
                    Some("conntrack") => {
                        let neg = t.next_if_eq(&"!").is_some();
                        expect(&mut t, "--ctstate")?;
                        let states = t.next().ok_or("ctstate: missing states")?;
                        let states = states
                            .split(',')
                            .map(|s| match s {
                                "NEW" => Ok(CtState::New),
                                "ESTABLISHED" => Ok(CtState::Established),
                                "RELATED" => Ok(CtState::Related),
                                "INVALID" => Ok(CtState::Invalid),
                                "DNAT" => Ok(CtState::Dnat),
                                other => Err(format!("unknown ctstate {other:?}")),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        matches.push(Match::CtState(states, neg));
                    }
                    Some("statistic") => {
                        expect(&mut t, "--mode")?;
                        expect(&mut t, "random")?;
                        expect(&mut t, "--probability")?;
                        matches.push(Match::Probability(t.next().ok_or("probability: missing value")?.to_string()));
                    }
                    Some("set") => {
                        let negated = t.next_if_eq(&"!").is_some();
                        expect(&mut t, "--match-set")?;
                        let name = t.next().ok_or("set: missing name")?.to_string();
                        let flags = t.next().ok_or("set: missing flags")?.to_string();
                        matches.push(Match::Set { name, flags, negated });
                    }
                    Some("ipvs") => {
                        // In any order: kproxy writes `--vaddr A/32 --vproto
                        // tcp --vport P`; iptables-save prints `--vproto 6
                        // --vaddr A --vport P`.
                        let (mut addr, mut proto, mut port) = (None, None, None);
                        while let Some(option) = t.next_if(|o| ["--vaddr", "--vproto", "--vport"].contains(o)) {
                            match option {
                                "--vaddr" => addr = Some(ipnet(t.next())?.addr()),
                                "--vproto" => {
                                    proto = Some(match t.next() {
                                        Some("6") => Protocol::Tcp,
                                        Some("17") => Protocol::Udp,
                                        Some("132") => Protocol::Sctp,
                                        other => protocol(other)?,
                                    })
                                }
                                _ => port = Some(u16::try_from(num(t.next(), "vport")?).map_err(|_| "vport: out of range")?),
                            }
                        }
                        match (addr, proto, port) {
                            (Some(addr), Some(protocol), Some(port)) => matches.push(Match::IpvsVirtual { addr, protocol, port }),
                            _ => return Err("ipvs: expected --vaddr, --vproto and --vport".into()),
                        }
                    }
                    Some("recent") => {
                        // In any order: kproxy writes `--name N --mask M
                        // --rsource --rcheck ...`; iptables-save prints
                        // `--rcheck --seconds S --reap --name N ...`.
                        let (mut name, mut v6, mut check, mut set, mut seconds) = (None, false, false, false, None);
                        while let Some(option) = t.next_if(|o| ["--name", "--mask", "--rsource", "--rcheck", "--set", "--seconds", "--reap"].contains(o)) {
                            match option {
                                "--name" => name = Some(t.next().ok_or("recent: missing name")?.to_string()),
                                "--mask" => v6 = t.next().ok_or("recent: missing mask")?.contains(':'),
                                "--rcheck" => check = true,
                                "--set" => set = true,
                                "--seconds" => seconds = Some(num(t.next(), "seconds")?),
                                _ => {}
                            }
                        }
                        let name = name.ok_or("recent: missing --name")?;
                        match (check, set, seconds) {
                            (true, false, Some(seconds)) => matches.push(Match::RecentCheck { name, seconds, v6 }),
                            (false, true, _) => matches.push(Match::RecentSet { name, v6 }),
                            _ => return Err("recent: expected --rcheck --seconds N, or --set".into()),
                        }
                    }
                    other => return Err(format!("unknown match module {other:?}")),
                },
                "-p" => {
                    let p = protocol(t.next())?;
                    matches.push(Match::Protocol(p));
                }
                "-s" => matches.push(Match::Source(ipnet(t.next())?, neg)),
                "-d" => matches.push(Match::Destination(ipnet(t.next())?, neg)),
                "--dport" => {
                    let port = num(t.next(), "dport")?;
                    matches.push(Match::DestinationPort(u16::try_from(port).map_err(|_| format!("port {port} out of range"))?));
                }
                "-i" => matches.push(Match::InInterface(t.next().ok_or("-i: missing name")?.to_string(), neg)),
                "-j" => {
                    target = Some(match t.next() {
                        Some("ACCEPT") => Target::Accept,
                        Some("DROP") => Target::Drop,
                        Some("RETURN") => Target::Return,
                        Some("REJECT") => {
                            // iptables-save names the default reply.
                            if t.next_if_eq(&"--reject-with").is_some() {
                                t.next().ok_or("REJECT: missing --reject-with value")?;
                            }
                            Target::Reject
                        }
                        Some("MASQUERADE") => {
                            expect(&mut t, "--random-fully")?;
                            Target::Masquerade
                        }
                        Some("DNAT") => {
                            expect(&mut t, "--to-destination")?;
                            let a = t.next().ok_or("DNAT: missing destination")?;
                            Target::Dnat(a.parse().map_err(|_| format!("DNAT: bad destination {a:?}"))?)
                        }
                        Some("MARK") => match t.next() {
                            Some("--or-mark") => Target::OrMark(num(t.next(), "or-mark")?),
                            Some("--xor-mark") => Target::XorMark(num(t.next(), "xor-mark")?),
                            // How iptables-save prints both: V/V is an OR,
                            // V/0 an XOR.
                            Some("--set-xmark") => {
                                let v = t.next().ok_or("set-xmark: missing value")?;
                                let (value, mask) = v.split_once('/').ok_or("set-xmark: expected VALUE/MASK")?;
                                let (value, mask) = (num(Some(value), "set-xmark")?, num(Some(mask), "set-xmark")?);
                                match mask {
                                    m if m == value => Target::OrMark(value),
                                    0 => Target::XorMark(value),
                                    _ => return Err(format!("MARK --set-xmark {v}: only OR (V/V) and XOR (V/0) are followed")),
                                }
                            }
                            other => return Err(format!("MARK: unexpected {other:?}")),
                        },
                        Some(chain) if !chain.starts_with('-') => Target::Jump(chain.to_string()),
                        other => return Err(format!("-j: unexpected {other:?}")),
                    });
                    if let Some(extra) = t.next() {
                        return Err(format!("unexpected {extra:?} after the target"));
                    }
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        let rule = Rule { matches, target: target.unwrap_or(Target::Nothing) };
        rule.check_family(family)?;
        Ok(rule)
    }

    /// Rejects addresses of the other family, as iptables/ip6tables would.
    fn check_family(&self, family: IpFamily) -> Result<(), String> {
        let v6 = family == IpFamily::V6;
        let bad = |ip: &IpAddr| ip.is_ipv6() != v6;
        for m in &self.matches {
            if let Match::Source(n, _) | Match::Destination(n, _) = m {
                if bad(&n.addr()) {
                    return Err(format!("address {n} is not {family:?}"));
                }
            }
        }
        if let Target::Dnat(a) = &self.target {
            if bad(&a.ip()) {
                return Err(format!("DNAT to {a} is not {family:?}"));
            }
        }
        Ok(())
    }
}

fn expect<'a>(t: &mut impl Iterator<Item = &'a str>, want: &str) -> Result<(), String> {
    match t.next() {
        Some(tok) if tok == want => Ok(()),
        other => Err(format!("expected {want:?}, found {other:?}")),
    }
}

/// Splits a rule line into tokens the way iptables-restore does: spaces
/// separate, double quotes group.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' | '\t' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if any {
        out.push(cur);
    }
    Ok(out)
}
/// `tcp`, `udp` or `sctp`, as `-p` and `--vproto` spell them.
fn protocol(token: Option<&str>) -> Result<Protocol, String> {
    match token {
        Some("tcp") => Ok(Protocol::Tcp),
        Some("udp") => Ok(Protocol::Udp),
        Some("sctp") => Ok(Protocol::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `iptables-save` prints the ipvs match's options in its
    /// own order and spelling; both read as the same match.
    #[test]
    fn the_ipvs_match_reads_in_either_order() {
        let ours = Rule::parse("-s 1.2.3.4/32 -m ipvs --vaddr 1.2.3.4/32 --vproto tcp --vport 80 -j DROP", IpFamily::V4).unwrap();
        let kernel = Rule::parse("-s 1.2.3.4/32 -m ipvs --vproto 6 --vaddr 1.2.3.4 --vport 80 -j DROP", IpFamily::V4).unwrap();
        assert_eq!(ours, kernel);
        assert!(matches!(kernel.matches[1], Match::IpvsVirtual { protocol: Protocol::Tcp, port: 80, .. }), "{kernel:?}");
        assert!(Rule::parse("-m ipvs --vproto 6 --vport 80 -j DROP", IpFamily::V4).unwrap_err().contains("--vaddr"));
    }
}
