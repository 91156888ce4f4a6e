//! Who is on the other end of an admin request.
//!
//! A TCP peer is looked up by its exact connection: both addresses and both
//! ports, in the kernel's own socket table (`sock_diag`, the netlink
//! interface `ss` uses), for IPv4 and IPv6 alike (v4-mapped addresses are
//! compared as IPv4). Exactly one socket must match, and it must have an
//! owner: a connection that is in TIME_WAIT, still a request, closed, or
//! held by nobody names no uid, and neither does a table with two matches.
//! Such a peer is *unattributable*, which the admin plane refuses. A peer
//! whose address is not one of this host's is *remote*: another pod or
//! host, which only a token lets in.
//!
//! A unix-socket peer is named by the kernel at `connect` time
//! (`SO_PEERCRED`).
//!
//! The uid of a TCP socket is the uid that created it, whatever process
//! holds it later: a worker that hands its connection to another process
//! is still the worker.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, IPPROTO_TCP, TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::user::WorkerUser;

/// The kernel's state for a request socket (a connection not yet
/// accepted); not in the crate's constants.
const TCP_NEW_SYN_RECV: u8 = 12;

/// The two ends of an accepted connection, as the server saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// `SO_PEERCRED` of a unix-socket client; `None` when the kernel gave
    /// none.
    Unix {
        uid: Option<u32>,
        pid: Option<i32>,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp { remote, .. } => write!(f, "{remote}"),
            Peer::Unix { uid: Some(uid), pid } => {
                write!(f, "unix socket, uid {uid}")?;
                pid.map_or(Ok(()), |p| write!(f, ", pid {p}"))
            }
            Peer::Unix { uid: None, .. } => write!(f, "unix socket, unknown uid"),
        }
    }
}

/// What the kernel says of the client end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// A socket of this host (this network namespace), created by `uid`;
    /// `inode` 0 for a unix-socket peer.
    Local { uid: u32, inode: u64 },
    /// The client's address is not one of this host's.
    Remote,
    /// A local address whose socket cannot be named exactly; why.
    Unattributable(String),
}

/// Who is on the other end of `peer` (blocking: one netlink dump per
/// address family).
pub fn attribute(peer: &Peer) -> Attribution {
    match *peer {
        Peer::Unix { uid: Some(uid), .. } => Attribution::Local { uid, inode: 0 },
        Peer::Unix { uid: None, .. } => Attribution::Unattributable("the kernel named no peer uid".into()),
        Peer::Tcp { local, remote } => {
            let (local, remote) = (canonical(local), canonical(remote));
            if !is_local_ip(remote.ip()) {
                return Attribution::Remote;
            }
            match client_sockets(remote, local) {
                Ok(found) => attribute_one(&found),
                Err(e) => Attribution::Unattributable(format!("the socket table could not be read: {e}")),
            }
        }
    }
}

/// One socket of the kernel's table: the client end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    state: u8,
    uid: u32,
    inode: u32,
}

fn attribute_one(found: &[Found]) -> Attribution {
    let f = match found {
        [] => return Attribution::Unattributable("no socket of this host has the connection's addresses".into()),
        [f] => f,
        many => return Attribution::Unattributable(format!("{} sockets have the connection's addresses", many.len())),
    };
    let state = match f.state {
        TCP_TIME_WAIT => Some("in TIME_WAIT"),
        TCP_SYN_RECV | TCP_NEW_SYN_RECV => Some("a connection request"),
        TCP_CLOSE => Some("closed"),
        TCP_LISTEN => Some("a listener"),
        _ => None,
    };
    match (state, f.inode) {
        (Some(what), _) => Attribution::Unattributable(format!("its socket is {what}, which names no owner")),
        (None, 0) => Attribution::Unattributable("its socket is held by no process (closed by its owner)".into()),
        (None, inode) => Attribution::Local { uid: f.uid, inode: inode.into() },
    }
}

/// IPv4 for a v4-mapped IPv6 address.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    }
}

/// Whether `ip` is one of this host's addresses: the kernel lets us bind
/// it. Only "not available" counts as not ours; any other answer (a scope
/// missing, a refusal) counts as ours, so the peer must then be named
/// exactly.
fn is_local_ip(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()),
    }
}

/// Every TCP socket, of either family, whose own address is `client` and
/// whose peer is `server` (both canonical), in any state.
fn client_sockets(client: SocketAddr, server: SocketAddr) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump(family, |id, state, uid, inode| {
            let src = canonical(SocketAddr::new(id.source_address, id.source_port));
            let dst = canonical(SocketAddr::new(id.destination_address, id.destination_port));
            if src == client && dst == server {
                found.push(Found { state, uid, inode });
            }
        })?;
    }
    Ok(found)
}

/// Dumps the TCP sockets of `family`, each as (id, state, uid, inode).
fn dump(family: u8, mut each: impl FnMut(&SocketId, u8, u32, u32)) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        if datagram.is_empty() {
            return Err(bad("the kernel closed the dump early".into()));
        }
        let mut at = 0;
        while at < datagram.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[at..])
                .map_err(|e| bad(format!("undecodable sock_diag message: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    each(&r.header.socket_id, r.header.state, r.header.uid, r.header.inode)
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(e.code.map_or_else(
                        || bad("sock_diag answered an error with no code".into()),
                        |c| io::Error::from_raw_os_error(-c.get()),
                    ));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// The processes holding the socket with this inode.
pub fn socket_holders(inode: u64) -> Vec<u32> {
    let wanted = format!("socket:[{inode}]");
    super::procs::processes()
        .into_iter()
        .filter(|p| {
            std::fs::read_dir(format!("/proc/{}/fd", p.pid)).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
            })
        })
        .map(|p| p.pid)
        .collect()
}

/// Whether `pid` is one of the runner's descendants (its worker, git, or an
/// orphan a subreaper runner adopted), not the runner itself.
pub fn is_runner_descendant(pid: u32) -> bool {
    super::procs::descends_from(&super::procs::processes(), pid, std::process::id())
}

/// Whether an admin request from `peer`, whose socket the kernel names
/// as `uid`'s (`inode`), comes from the worker, which runs as `user`: a
/// socket of the worker's uid; when the worker shares the runner's uid, a
/// socket held by one of the runner's descendants (or by nobody any
/// more), or a unix-socket client that is one.
pub fn is_worker_peer(user: WorkerUser, peer: &Peer, uid: u32, inode: u64) -> bool {
    if uid != user.uid {
        return false;
    }
    if user.is_separate() {
        return true;
    }
    match peer {
        Peer::Unix { pid, .. } => pid.is_none_or(|p| u32::try_from(p).is_ok_and(is_runner_descendant)),
        Peer::Tcp { .. } => {
            let holders = socket_holders(inode);
            holders.is_empty() || holders.into_iter().any(is_runner_descendant)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(c: &std::net::TcpStream) -> Peer {
        // The server's view: its local address is the client's peer.
        Peer::Tcp { local: c.peer_addr().unwrap(), remote: c.local_addr().unwrap() }
    }

    #[test]
    fn a_loopback_connection_is_named_exactly_with_its_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _server_end = l.accept().unwrap();
        let Attribution::Local { uid, inode } = attribute(&tcp(&c)) else { panic!("{:?}", attribute(&tcp(&c))) };
        assert_eq!(uid, rustix::process::getuid().as_raw());
        assert!(socket_holders(inode).contains(&std::process::id()));
    }

    #[test]
    fn ipv6_and_v4_mapped_connections_are_named_too() {
        let Ok(l) = std::net::TcpListener::bind("[::]:0") else { return };
        let port = l.local_addr().unwrap().port();
        for addr in ["[::1]", "127.0.0.1", "[::ffff:127.0.0.1]"] {
            let Ok(c) = std::net::TcpStream::connect(format!("{addr}:{port}")) else { continue };
            let (_s, seen) = l.accept().unwrap();
            // The server saw `seen`; the client's own address, as the
            // server's socket names it, may be v4-mapped.
            let peer = Peer::Tcp { local: c.peer_addr().unwrap(), remote: seen };
            assert!(matches!(attribute(&peer), Attribution::Local { .. }), "{addr}: {:?}", attribute(&peer));
        }
    }

    #[test]
    fn a_connection_nobody_has_or_an_address_elsewhere_is_not_attributed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = Peer::Tcp { local: l.local_addr().unwrap(), remote: "127.0.0.1:9".parse().unwrap() };
        assert!(matches!(attribute(&gone), Attribution::Unattributable(_)), "{:?}", attribute(&gone));
        let remote = Peer::Tcp { local: l.local_addr().unwrap(), remote: "192.0.2.1:40000".parse().unwrap() };
        assert_eq!(attribute(&remote), Attribution::Remote);
        assert_eq!(attribute(&Peer::Unix { uid: Some(7), pid: None }), Attribution::Local { uid: 7, inode: 0 });
        assert!(matches!(attribute(&Peer::Unix { uid: None, pid: None }), Attribution::Unattributable(_)));
    }

    #[test]
    fn a_closed_client_end_is_not_attributed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server_end, _) = l.accept().unwrap();
        let peer = tcp(&c);
        drop(c);
        // The client closed first: its end is FIN_WAIT (held by nobody),
        // then TIME_WAIT once the server closes too.
        assert!(matches!(attribute(&peer), Attribution::Unattributable(_)), "{:?}", attribute(&peer));
        drop(server_end);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(matches!(attribute(&peer), Attribution::Unattributable(_)), "{:?}", attribute(&peer));
    }

    #[test]
    fn several_or_ownerless_matches_are_refused() {
        let one = Found { state: 1, uid: 5, inode: 9 };
        assert_eq!(attribute_one(&[one]), Attribution::Local { uid: 5, inode: 9 });
        assert!(matches!(attribute_one(&[one, one]), Attribution::Unattributable(_)));
        for state in [TCP_TIME_WAIT, TCP_SYN_RECV, TCP_NEW_SYN_RECV, TCP_CLOSE, TCP_LISTEN] {
            assert!(matches!(attribute_one(&[Found { state, ..one }]), Attribution::Unattributable(_)), "{state}");
        }
        assert!(matches!(attribute_one(&[Found { inode: 0, ..one }]), Attribution::Unattributable(_)));
    }
}
