//! Who the client is: the peer address, or the `X-Forwarded-For` entry a trusted proxy vouches for.

use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;

/// Proxies whose `X-Forwarded-For` is believed. Empty: the header is never believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    fn trusted(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client address: walking `X-Forwarded-For` from the right while hops are trusted
    /// proxies, the first untrusted address; the peer itself when it is not trusted.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        xff: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> IpAddr {
        if !self.trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        for value in xff.rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for part in text.rsplit(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => {
                        client = ip;
                        if !self.trusted(&ip) {
                            return ip;
                        }
                    }
                    Err(_) => return client,
                }
            }
        }
        client
    }

    /// The `X-Forwarded-For` to send upstream: the trusted chain plus the peer, or just the
    /// peer when it is not a trusted proxy (a client's own header is not passed on).
    pub fn forwarded_for<'a>(
        &self,
        peer: IpAddr,
        mut xff: impl Iterator<Item = &'a HeaderValue>,
    ) -> HeaderValue {
        if self.trusted(&peer) {
            let chain: Vec<&str> = xff.by_ref().filter_map(|v| v.to_str().ok()).collect();
            if !chain.is_empty() {
                let v = format!("{}, {peer}", chain.join(", "));
                return HeaderValue::from_str(&v).unwrap_or_else(|_| peer_value(peer));
            }
        }
        peer_value(peer)
    }
}

/// The header value of an address, remembered per thread for the last address seen: most
/// requests on a connection (and behind a load balancer, most connections) share a peer.
fn peer_value(peer: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((ip, v)) if *ip == peer => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&peer.to_string()).expect("an IP is a header value");
                *last = Some((peer, v.clone()));
                v
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()])
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer: IpAddr = "1.2.3.4".parse().unwrap();
        let x = [hv("9.9.9.9")];
        assert_eq!(tp().client_ip(peer, x.iter()), peer);
        assert_eq!(tp().forwarded_for(peer, x.iter()), "1.2.3.4");
        assert_eq!(tp().forwarded_for(peer, x.iter()), "1.2.3.4");
        assert_eq!(TrustedProxies::default().client_ip(peer, x.iter()), peer);
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let x = [hv("6.6.6.6, 5.5.5.5"), hv("10.1.1.1")];
        assert_eq!(
            tp().client_ip(peer, x.iter()),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            tp().forwarded_for(peer, x.iter()),
            "6.6.6.6, 5.5.5.5, 10.1.1.1, 10.0.0.1"
        );
        let junk = [hv("nonsense")];
        assert_eq!(tp().client_ip(peer, junk.iter()), peer);
    }
}
