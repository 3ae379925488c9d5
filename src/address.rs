//! Addresses as the original Python scripts printed them, for log lines
//! (`Connected by ('127.0.0.1', 54321)`).

use std::net::SocketAddr;

/// Formats an address the way Python prints a socket address tuple.
pub fn py_address(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("('{}', {})", a.ip(), a.port()),
        SocketAddr::V6(a) => format!(
            "('{}', {}, {}, {})",
            a.ip(),
            a.port(),
            a.flowinfo(),
            a.scope_id()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_like_python_tuples() {
        assert_eq!(
            py_address(SocketAddr::from(([127, 0, 0, 1], 5000))),
            "('127.0.0.1', 5000)"
        );
        assert_eq!(
            py_address(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5000))),
            "('::1', 5000, 0, 0)"
        );
    }
}
