//! The PROXY protocol: who the client really is, behind a load balancer.
//!
//! HAProxy (and most TCP load balancers) can open each connection to a
//! backend with a header naming the client it is relaying: text in version
//! 1 (`PROXY TCP4 203.0.113.7 192.0.2.1 51234 65432\r\n`), binary in version
//! 2 (HAProxy's `send-proxy-v2`). The header comes before anything else, TLS
//! included, and is parsed here with the `ppp` crate.
//!
//! A header is believed only from the sources a [`ProxyPolicy`] allows (by
//! default loopback only): anyone else could claim any address. A connection
//! from another source, or with a malformed, truncated or missing header, is
//! refused; the caller logs why and closes it. The header is read exactly,
//! never past its end, so what follows (a TLS handshake, the first message)
//! is untouched.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::HeaderResult;
use tokio::io::{AsyncRead, AsyncReadExt};

use tokio::time::Instant;

use super::transport::until;
use crate::error::{Error, Result};
use crate::socket::Socket;

/// The longest version 1 header the specification allows.
const V1_MAX: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`).
const SHORTEST: usize = 15;
/// Version 2 starts with these twelve bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The most a version 2 header may carry after its fixed 16 bytes: the
/// addresses and any TLVs. HAProxy's own are far smaller.
const V2_MAX_PAYLOAD: usize = 4096;

/// Which sources may send a PROXY header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyPolicy {
    allow: Vec<IpNet>,
}

impl ProxyPolicy {
    /// Headers are believed from these networks only.
    pub fn new(allow: Vec<IpNet>) -> Self {
        ProxyPolicy { allow }
    }

    /// Does the policy believe a header from `ip`?
    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

impl Default for ProxyPolicy {
    /// Loopback only: a load balancer on the same machine.
    fn default() -> Self {
        "127.0.0.0/8,::1/128".parse().expect("loopback") // a constant list of valid networks
    }
}

impl FromStr for ProxyPolicy {
    type Err = Error;

    /// Comma-separated networks (`10.0.0.0/8`) or single addresses.
    fn from_str(list: &str) -> Result<Self> {
        let allow = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Error::invalid(format!(
                            "{item:?} is not a network (like 10.0.0.0/8) or an address"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        if allow.is_empty() {
            return Err(Error::invalid("the PROXY allow list is empty"));
        }
        Ok(ProxyPolicy { allow })
    }
}

impl fmt::Display for ProxyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        f.write_str(&nets.join(","))
    }
}

/// Reads the PROXY header at the start of `stream`, which came from `peer`,
/// and returns the client's address: the header's source, or `peer` itself
/// for a header that names none (a health check: `LOCAL`, `UNKNOWN`).
///
/// # Errors
///
/// [`Error::Proxy`] for a source the policy does not allow, a missing or
/// malformed header, or a connection that ends inside it; [`Error::Io`].
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    policy: &ProxyPolicy,
) -> Result<SocketAddr> {
    if !policy.allows(peer.ip()) {
        return Err(Error::Proxy(format!(
            "a PROXY header is only accepted from {policy}, not from {}",
            peer.ip()
        )));
    }
    let mut header = vec![0; SHORTEST];
    read_exact(stream, &mut header).await?;
    if header.starts_with(V2_SIGNATURE) {
        // Signature, version and command, family, then the payload length.
        header.resize(16, 0);
        read_exact(stream, &mut header[SHORTEST..]).await?;
        let payload = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if payload > V2_MAX_PAYLOAD {
            return Err(Error::Proxy(format!(
                "a PROXY v2 header announcing {payload} bytes, more than the {V2_MAX_PAYLOAD} accepted"
            )));
        }
        header.resize(16 + payload, 0);
        read_exact(stream, &mut header[16..]).await?;
    } else if header.starts_with(b"PROXY ") {
        // Text: up to the line's end, one byte at a time so as not to read
        // past it (the header is short, and sent once per connection).
        while !header.ends_with(b"\r\n") {
            if header.len() == V1_MAX {
                return Err(Error::Proxy(format!(
                    "a PROXY v1 header longer than {V1_MAX} bytes"
                )));
            }
            let mut byte = [0];
            read_exact(stream, &mut byte).await?;
            header.push(byte[0]);
        }
    } else {
        return Err(Error::Proxy(
            "no PROXY header: the connection did not come through the proxy".into(),
        ));
    }
    client_address(&header).map(|client| client.unwrap_or(peer))
}

/// The source address a complete header names, if any.
fn client_address(header: &[u8]) -> Result<Option<SocketAddr>> {
    let malformed = |e: &dyn fmt::Display| Error::Proxy(format!("a malformed PROXY header: {e}"));
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(parsed)) => Ok(match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(parsed)) => Ok(match (parsed.command, parsed.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => Some((a.source_address, a.source_port).into()),
            (_, ppp::v2::Addresses::IPv6(a)) => Some((a.source_address, a.source_port).into()),
            (_, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(malformed(&e)),
        HeaderResult::V2(Err(e)) => Err(malformed(&e)),
    }
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<()> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Proxy(
            "the connection ended inside its PROXY header".into(),
        )),
        Err(e) => Err(Error::from_io(e)),
    }
}

/// Reads the PROXY header of a connection from `peer`, bounded like a
/// message by the message timeout, and given up (`Interrupted`) once `stop`
/// resolves; returns the client it names.
pub(crate) async fn client_behind_proxy<S: Socket>(
    stream: &mut S,
    peer: SocketAddr,
    limit: Option<Duration>,
    stop: impl Future<Output = ()>,
    policy: &ProxyPolicy,
) -> Result<SocketAddr> {
    let header = until(
        limit.map(|t| Instant::now() + t),
        read_header(stream, peer, policy),
    );
    tokio::select! {
        result = header => result.unwrap_or(Err(Error::Timeout(limit.unwrap_or_default()))),
        () = stop => Err(Error::Io(io::ErrorKind::Interrupted.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn the_policy_parses_networks_and_addresses() -> TestResult {
        let policy: ProxyPolicy = "10.0.0.0/8, 192.0.2.7,::1".parse()?;
        assert!(policy.allows("10.1.2.3".parse()?));
        assert!(policy.allows("192.0.2.7".parse()?));
        assert!(!policy.allows("192.0.2.8".parse()?));
        assert!(policy.allows("::1".parse()?));
        assert!(
            "10.0.0.0/33"
                .parse::<ProxyPolicy>()
                .is_err_and(|e| e.to_string().contains("10.0.0.0/33"))
        );
        assert!(" , ".parse::<ProxyPolicy>().is_err());
        Ok(())
    }

    #[test]
    fn loopback_by_default_including_mapped_ipv4() -> TestResult {
        let policy = ProxyPolicy::default();
        assert!(policy.allows("127.0.0.1".parse()?));
        assert!(policy.allows("::ffff:127.0.0.1".parse()?));
        assert!(!policy.allows("192.0.2.1".parse()?));
        Ok(())
    }

    #[test]
    fn addresses_from_both_versions() -> TestResult {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 65432\r\n";
        assert_eq!(client_address(v1)?, Some("203.0.113.7:51234".parse()?));
        assert_eq!(client_address(b"PROXY UNKNOWN\r\n")?, None);
        let mut v2 = V2_SIGNATURE.to_vec();
        // PROXY command, TCP over IPv6, 36 bytes of addresses.
        v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let client: std::net::Ipv6Addr = "2001:db8::7".parse()?;
        v2.extend_from_slice(&client.octets());
        v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        v2.extend_from_slice(&[0xc8, 0x22, 0xff, 0x98]);
        assert_eq!(client_address(&v2)?, Some("[2001:db8::7]:51234".parse()?));
        assert!(client_address(b"PROXY TCP4 nonsense\r\n").is_err());
        Ok(())
    }

    /// `read_header` over `bytes` followed by `after`, from `peer`.
    fn read(bytes: &[u8], peer: &str) -> Result<(SocketAddr, Vec<u8>)> {
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let mut stream: &[u8] = bytes;
        let peer = peer.parse().map_err(|_| Error::invalid("a test address"))?;
        let client = runtime.block_on(read_header(&mut stream, peer, &ProxyPolicy::default()))?;
        Ok((client, stream.to_vec()))
    }

    fn v2_ipv4(payload_extra: &[u8]) -> Vec<u8> {
        let mut v2 = V2_SIGNATURE.to_vec();
        // PROXY command, TCP over IPv4: 12 bytes of addresses, then extras.
        let length = u16::try_from(12 + payload_extra.len()).unwrap_or(u16::MAX);
        v2.extend_from_slice(&[0x21, 0x11]);
        v2.extend_from_slice(&length.to_be_bytes());
        v2.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1, 0xc8, 0x22, 0xff, 0x98]);
        v2.extend_from_slice(payload_extra);
        v2
    }

    #[test]
    fn a_header_is_read_whole_and_nothing_past_it() -> TestResult {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 65432\r\nhello";
        let (client, rest) = read(v1, "127.0.0.1:40000")?;
        assert_eq!(client, "203.0.113.7:51234".parse()?);
        assert_eq!(rest, b"hello");
        // A v2 header with extensions (TLVs) after the addresses.
        let mut v2 = v2_ipv4(&[0x04, 0x00, 0x02, 0xab, 0xcd]);
        v2.extend_from_slice(b"hello");
        let (client, rest) = read(&v2, "127.0.0.1:40000")?;
        assert_eq!(client, "203.0.113.7:51234".parse()?);
        assert_eq!(rest, b"hello");
        // A health check names nobody: the peer is the client.
        let (client, _) = read(b"PROXY UNKNOWN\r\n", "127.0.0.1:40000")?;
        assert_eq!(client, "127.0.0.1:40000".parse()?);
        Ok(())
    }

    fn refusal(bytes: &[u8], peer: &str) -> String {
        match read(bytes, peer) {
            Err(Error::Proxy(why)) => why,
            other => format!("not refused: {other:?}"),
        }
    }

    #[test]
    fn what_is_refused_says_why() -> TestResult {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 65432\r\n";
        let why = refusal(v1, "192.0.2.9:40000");
        assert!(
            why.contains("only accepted from 127.0.0.0/8,::1/128, not from 192.0.2.9"),
            "{why}"
        );
        assert!(refusal(b"GET / HTTP/1.0\r\n\r\n", "127.0.0.1:1").contains("no PROXY header"));
        assert!(refusal(&v1[..20], "127.0.0.1:1").contains("ended inside"));
        assert!(refusal(&v2_ipv4(&[])[..20], "127.0.0.1:1").contains("ended inside"));
        // A v1 line of exactly the longest length is read; one byte more is not.
        let mut longest = b"PROXY UNKNOWN ".to_vec();
        longest.resize(V1_MAX - 2, b'x');
        longest.extend_from_slice(b"\r\n");
        assert!(read(&longest, "127.0.0.1:1").is_ok());
        let mut longer = longest[..V1_MAX - 2].to_vec();
        longer.extend_from_slice(b"x\r\n");
        assert!(refusal(&longer, "127.0.0.1:1").contains("longer than"));
        // A v2 payload of the largest size accepted is read; larger is not.
        let most = v2_ipv4(&vec![0; V2_MAX_PAYLOAD - 12]);
        assert!(!refusal(&most, "127.0.0.1:1").contains("announcing"));
        let too_much = v2_ipv4(&vec![0; V2_MAX_PAYLOAD - 11]);
        assert!(refusal(&too_much, "127.0.0.1:1").contains("announcing 4097 bytes"));
        Ok(())
    }
}
