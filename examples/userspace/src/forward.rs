//! The proxy itself: one listener per [`ListenerKey`], on a port the
//! kernel picks, forwarding each TCP connection and each UDP session to
//! one of its endpoints, round robin, or to the client's endpoint under
//! `sessionAffinity: ClientIP`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kproxy_core::{IpFamily, Protocol};
use nix::libc;
use nix::sys::socket::{recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::plan::{Forwarding, ListenerKey};

/// How long one attempt to reach an endpoint may take before the next
/// endpoint is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// At most this many endpoints are tried for one connection.
const MAX_TRIES: usize = 4;

/// Each direction of a TCP relay reads up to this much at a time: with
/// tokio's default (8 KiB), one connection moved about 360 MiB/s in
/// `kproxy-userspace-bench`, with 64 KiB about 1,330 (256 KiB gained
/// nothing more).
const RELAY_BUFFER: usize = 64 * 1024;

/// Chooses endpoints for one listener.
#[derive(Debug)]
pub struct Balancer {
    state: Mutex<BalancerState>,
}

#[derive(Debug)]
struct BalancerState {
    forwarding: Forwarding,
    next: usize,
    /// Under affinity: each client's endpoint and when it last came.
    clients: HashMap<IpAddr, (SocketAddr, Instant)>,
}

impl Balancer {
    /// A balancer over `forwarding`'s endpoints.
    pub fn new(forwarding: Forwarding) -> Balancer {
        Balancer { state: Mutex::new(BalancerState { forwarding, next: 0, clients: HashMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BalancerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// New endpoints or affinity: clients keep only endpoints still there,
    /// and nothing once affinity is off.
    pub fn update(&self, forwarding: Forwarding) {
        let mut s = self.lock();
        if forwarding.affinity.is_none() {
            s.clients.clear();
        } else {
            s.clients.retain(|_, (ep, _)| forwarding.endpoints.contains(ep));
        }
        s.forwarding = forwarding;
    }

    /// The endpoint for a connection from `client`: its own under affinity
    /// (while it came back within the timeout), else the next in turn.
    pub fn pick(&self, client: IpAddr) -> Option<SocketAddr> {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some(timeout) = s.forwarding.affinity {
            if let Some(&(ep, last)) = s.clients.get(&client) {
                if now.duration_since(last) < timeout && s.forwarding.endpoints.contains(&ep) {
                    s.clients.insert(client, (ep, now));
                    return Some(ep);
                }
            }
            if s.clients.len() > 4096 {
                s.clients.retain(|_, (_, last)| now.duration_since(*last) < timeout);
            }
        }
        let count = s.forwarding.endpoints.len();
        if count == 0 {
            return None;
        }
        let ep = s.forwarding.endpoints[s.next % count];
        s.next = (s.next + 1) % count;
        if s.forwarding.affinity.is_some() {
            s.clients.insert(client, (ep, now));
        }
        Some(ep)
    }

    /// Forgets `client`'s endpoint (it could not be reached).
    pub fn forget(&self, client: IpAddr) {
        self.lock().clients.remove(&client);
    }

    /// Whether `endpoint` is still one of this listener's.
    pub fn has(&self, endpoint: SocketAddr) -> bool {
        self.lock().forwarding.endpoints.contains(&endpoint)
    }

    fn len(&self) -> usize {
        self.lock().forwarding.endpoints.len()
    }
}

/// A running listener; its task (and its UDP sessions) stop when it is
/// dropped. Connections already forwarded carry on.
#[derive(Debug)]
struct Running {
    port: u16,
    balancer: Arc<Balancer>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every listener of one family.
#[derive(Debug)]
pub struct Listeners {
    family: IpFamily,
    udp_idle: Duration,
    running: BTreeMap<ListenerKey, Running>,
}

impl Listeners {
    /// No listeners yet; UDP sessions end after `udp_idle` without a
    /// datagram either way.
    pub fn new(family: IpFamily, udp_idle: Duration) -> Listeners {
        Listeners { family, udp_idle, running: BTreeMap::new() }
    }

    /// Opens the listeners `wanted` has and this does not, updates the
    /// others' endpoints and closes the rest; returns each listener's port.
    /// Must run inside a tokio runtime.
    pub fn reconcile(&mut self, wanted: &BTreeMap<ListenerKey, Forwarding>) -> io::Result<BTreeMap<ListenerKey, u16>> {
        self.running.retain(|key, _| wanted.contains_key(key));
        for (key, forwarding) in wanted {
            match self.running.get(key) {
                Some(running) => running.balancer.update(forwarding.clone()),
                None => {
                    let running = self.open(key, forwarding.clone())?;
                    self.running.insert(key.clone(), running);
                }
            }
        }
        Ok(self.running.iter().map(|(k, r)| (k.clone(), r.port)).collect())
    }

    /// Closes every listener.
    pub fn close_all(&mut self) {
        self.running.clear();
    }

    fn open(&self, key: &ListenerKey, forwarding: Forwarding) -> io::Result<Running> {
        let balancer = Arc::new(Balancer::new(forwarding));
        let (port, task) = match key.service.protocol {
            Protocol::Tcp => {
                let listener = tcp_listener(self.family)?;
                let port = listener.local_addr()?.port();
                (port, tokio::spawn(serve_tcp(listener, Arc::clone(&balancer))))
            }
            Protocol::Udp => {
                let socket = udp_socket(self.family)?;
                let port = socket.local_addr()?.port();
                (port, tokio::spawn(serve_udp(Arc::new(socket), Arc::clone(&balancer), self.udp_idle, self.family)))
            }
            Protocol::Sctp => return Err(io::Error::other("userspace mode does not proxy SCTP")),
        };
        tracing::debug!(service = %key.service, pool = ?key.pool, port, "listening");
        Ok(Running { port, balancer, task })
    }
}

fn unspecified(family: IpFamily) -> SocketAddr {
    match family {
        IpFamily::V4 => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpFamily::V6 => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn socket(family: IpFamily, kind: socket2::Type) -> io::Result<socket2::Socket> {
    let domain = if family == IpFamily::V4 { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, kind, None)?;
    if family == IpFamily::V6 {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&unspecified(family).into())?;
    Ok(socket)
}

fn tcp_listener(family: IpFamily) -> io::Result<TcpListener> {
    let socket = socket(family, socket2::Type::STREAM)?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn udp_socket(family: IpFamily) -> io::Result<UdpSocket> {
    let socket = socket(family, socket2::Type::DGRAM)?;
    match family {
        IpFamily::V4 => setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?,
        IpFamily::V6 => setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    UdpSocket::from_std(socket.into())
}

async fn serve_tcp(listener: TcpListener, balancer: Arc<Balancer>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(relay_tcp(client, peer, Arc::clone(&balancer)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects `client` to an endpoint (trying the next one when one cannot
/// be reached) and copies both ways until both sides are done; resets the
/// client when no endpoint answers.
async fn relay_tcp(mut client: TcpStream, peer: SocketAddr, balancer: Arc<Balancer>) {
    for _ in 0..balancer.len().clamp(1, MAX_TRIES) {
        let Some(endpoint) = balancer.pick(peer.ip()) else { break };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(mut upstream)) => {
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUFFER, RELAY_BUFFER).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(%endpoint, error = %e, "endpoint refused a connection"),
            Err(_) => tracing::debug!(%endpoint, "endpoint did not answer"),
        }
        balancer.forget(peer.ip());
    }
    // A refusal, as the client would get from the kernel.
    let _ = client.set_zero_linger();
}

/// One client's UDP session: a socket connected to its endpoint, and the
/// task that relays the endpoint's replies.
#[derive(Debug)]
struct Session {
    upstream: Arc<UdpSocket>,
    endpoint: SocketAddr,
    last: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds since `epoch`, for the idle clocks.
fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn serve_udp(socket: Arc<UdpSocket>, balancer: Arc<Balancer>, idle: Duration, family: IpFamily) {
    let epoch = Instant::now();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut sweep = tokio::time::interval(idle.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            got = socket.async_io(Interest::READABLE, || recv_with_dst(&socket, &mut buf)) => {
                let Ok((len, client, dst)) = got else { continue };
                let live = sessions.get(&client).is_some_and(|s| !s.task.is_finished() && balancer.has(s.endpoint));
                if !live {
                    sessions.remove(&client);
                    let Some(endpoint) = balancer.pick(client.ip()) else { continue };
                    match open_session(&socket, endpoint, client, dst, idle, epoch, family).await {
                        Ok(session) => {
                            sessions.insert(client, session);
                        }
                        Err(e) => {
                            tracing::debug!(%endpoint, error = %e, "cannot open a UDP session");
                            continue;
                        }
                    }
                }
                if let Some(session) = sessions.get(&client) {
                    session.last.store(millis(epoch), Ordering::Relaxed);
                    let _ = session.upstream.send(&buf[..len]).await;
                }
            }
            _ = sweep.tick() => sessions.retain(|_, s| !s.task.is_finished() && balancer.has(s.endpoint)),
        }
    }
}

async fn open_session(
    listener: &Arc<UdpSocket>,
    endpoint: SocketAddr,
    client: SocketAddr,
    dst: Option<IpAddr>,
    idle: Duration,
    epoch: Instant,
    family: IpFamily,
) -> io::Result<Session> {
    let upstream = Arc::new(UdpSocket::bind(unspecified(family)).await?);
    upstream.connect(endpoint).await?;
    let last = Arc::new(AtomicU64::new(millis(epoch)));
    let task = tokio::spawn(relay_replies(Arc::clone(listener), Arc::clone(&upstream), client, dst, Arc::clone(&last), idle, epoch));
    Ok(Session { upstream, endpoint, last, task })
}

/// Sends the endpoint's datagrams back to `client`, from the address the
/// client wrote to (`dst`), until the session has been idle for `idle`
/// or the endpoint is unreachable.
async fn relay_replies(listener: Arc<UdpSocket>, upstream: Arc<UdpSocket>, client: SocketAddr, dst: Option<IpAddr>, last: Arc<AtomicU64>, idle: Duration, epoch: Instant) {
    let mut buf = vec![0u8; 65536];
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let quiet = millis(epoch).saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            return;
        }
        match tokio::time::timeout(Duration::from_millis(idle_ms - quiet), upstream.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                last.store(millis(epoch), Ordering::Relaxed);
                let _ = listener.async_io(Interest::WRITABLE, || send_from(&listener, &buf[..len], client, dst)).await;
            }
            // The endpoint is gone (an ICMP error): the client's next
            // datagram opens a new session.
            Ok(Err(_)) => return,
            Err(_) => {}
        }
    }
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// One datagram: its length, its source, and the local address it was
/// sent to (after the kernel's redirect).
fn recv_with_dst(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(libc::in6_pktinfo);
    let msg = recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let from = msg.address.as_ref().and_then(to_socket_addr).ok_or_else(|| io::Error::other("a datagram without a source address"))?;
    let mut dst = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4PacketInfo(info) => dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))),
            ControlMessageOwned::Ipv6PacketInfo(info) => dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr))),
            _ => {}
        }
    }
    Ok((msg.bytes, from, dst))
}

/// Sends `data` to `to` from the local address `src`.
fn send_from(socket: &UdpSocket, data: &[u8], to: SocketAddr, src: Option<IpAddr>) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let fd = socket.as_raw_fd();
    let sent = match (to, src) {
        (SocketAddr::V4(to), Some(IpAddr::V4(src))) => {
            let info = libc::in_pktinfo { ipi_ifindex: 0, ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() }, ipi_addr: libc::in_addr { s_addr: 0 } };
            sendmsg(fd, &iov, &[ControlMessage::Ipv4PacketInfo(&info)], MsgFlags::MSG_DONTWAIT, Some(&SockaddrIn::from(to)))?
        }
        (SocketAddr::V6(to), Some(IpAddr::V6(src))) => {
            let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: src.octets() }, ipi6_ifindex: 0 };
            sendmsg(fd, &iov, &[ControlMessage::Ipv6PacketInfo(&info)], MsgFlags::MSG_DONTWAIT, Some(&SockaddrIn6::from(to)))?
        }
        _ => return socket.try_send_to(data, to),
    };
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding(eps: &[&str], affinity: Option<u64>) -> Forwarding {
        Forwarding { endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(), affinity: affinity.map(Duration::from_secs) }
    }

    #[test]
    fn round_robin_goes_through_every_endpoint_in_turn() {
        let b = Balancer::new(forwarding(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None));
        let client: IpAddr = "10.1.0.1".parse().unwrap();
        let picked: Vec<_> = (0..6).map(|_| b.pick(client).unwrap().ip().to_string()).collect();
        assert_eq!(picked, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        b.update(forwarding(&[], None));
        assert_eq!(b.pick(client), None, "no endpoint: nothing to pick");
    }

    #[test]
    fn affinity_keeps_a_client_on_its_endpoint_until_it_goes_or_affinity_is_switched_off() {
        let b = Balancer::new(forwarding(&["10.0.0.1:80", "10.0.0.2:80"], Some(60)));
        let (one, two): (IpAddr, IpAddr) = ("10.1.0.1".parse().unwrap(), "10.1.0.2".parse().unwrap());
        let first = b.pick(one).unwrap();
        assert!((0..5).all(|_| b.pick(one) == Some(first)));
        assert_ne!(b.pick(two), Some(first), "another client takes the next endpoint");
        // Its endpoint goes: the client moves to one still there.
        let other = if first.port() == 80 && first.ip().to_string() == "10.0.0.1" { "10.0.0.2:80" } else { "10.0.0.1:80" };
        b.update(forwarding(&[other], Some(60)));
        assert_eq!(b.pick(one).unwrap().to_string(), other);
        // Affinity off: round robin again.
        b.update(forwarding(&["10.0.0.1:80", "10.0.0.2:80"], None));
        let picked: std::collections::BTreeSet<_> = (0..4).map(|_| b.pick(one).unwrap()).collect();
        assert_eq!(picked.len(), 2);
    }
}
