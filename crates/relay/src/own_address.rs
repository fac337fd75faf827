//! An upstream that is the relay's own `--listen` address: the relay would stream from itself.
//! On a first start that only looks like an upstream that never answers (the relay does not
//! listen until it knows its upstream), and on a restart the relay would serve its archive and
//! wait for WAL that only it could produce. Seen here before anything starts; a loop through
//! other relays is seen by the engine ([`walrelay_walreceiver::tap`]).

use std::net::{IpAddr, SocketAddr, UdpSocket};

use walrelay_client::{ConnectParams, Endpoint};

/// Whether a connection to `candidate` reaches a listener bound to `listen`, `candidate` being an
/// address of this machine when `local`.
pub fn reaches_listener(listen: SocketAddr, candidate: SocketAddr, local: bool) -> bool {
    if !local || candidate.port() != listen.port() {
        return false;
    }
    match listen.ip() {
        // 0.0.0.0 takes every IPv4 address of the machine; [::] every address (dual stack).
        IpAddr::V4(ip) if ip.is_unspecified() => candidate.is_ipv4(),
        IpAddr::V6(ip) if ip.is_unspecified() => true,
        ip => ip == candidate.ip(),
    }
}

/// Whether `ip` is an address of this machine: only those can be bound.
fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The endpoints of `params` that are the relay's own listen address (a host name counts when any
/// of its addresses does; one that does not resolve does not).
pub async fn endpoints_reaching(params: &ConnectParams, listen: SocketAddr) -> Vec<String> {
    let mut own = Vec::new();
    for endpoint in &params.endpoints {
        let Endpoint::Tcp { host, addr, port } = endpoint else {
            continue;
        };
        let addresses: Vec<SocketAddr> = match addr {
            Some(ip) => vec![SocketAddr::new(*ip, *port)],
            None => match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(found) => found.collect(),
                Err(_) => continue,
            },
        };
        if addresses
            .iter()
            .any(|a| reaches_listener(listen, *a, is_local(a.ip())))
        {
            own.push(endpoint.to_string());
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_listen_address_itself_is_reached() {
        assert!(reaches_listener(
            at("127.0.0.1:5433"),
            at("127.0.0.1:5433"),
            true
        ));
        assert!(!reaches_listener(
            at("127.0.0.1:5433"),
            at("127.0.0.1:5432"),
            true
        ));
        assert!(!reaches_listener(
            at("127.0.0.1:5433"),
            at("127.0.0.2:5433"),
            true
        ));
        assert!(!reaches_listener(
            at("[::1]:5433"),
            at("127.0.0.1:5433"),
            true
        ));
    }

    #[test]
    fn a_wildcard_listener_takes_every_local_address_of_its_family() {
        assert!(reaches_listener(
            at("0.0.0.0:5433"),
            at("10.1.2.3:5433"),
            true
        ));
        assert!(!reaches_listener(
            at("0.0.0.0:5433"),
            at("10.1.2.3:5433"),
            false
        ));
        assert!(!reaches_listener(
            at("0.0.0.0:5433"),
            at("[::1]:5433"),
            true
        ));
        assert!(reaches_listener(
            at("[::]:5433"),
            at("127.0.0.1:5433"),
            true
        ));
        assert!(reaches_listener(at("[::]:5433"), at("[::1]:5433"), true));
    }

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("192.0.2.1".parse().unwrap()));
    }
}
