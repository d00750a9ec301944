//! Is an inbound connection a sidecar's mTLS? Its first bytes are peeked
//! (nothing is consumed): a TLS ClientHello offering ALPN `picket/1` is
//! terminated here; the app's own TLS (other ALPNs) and plaintext pass as
//! before. No plaintext on a timeout: a client that sends too little for
//! too long is closed (Istio warns why: a timeout fallback breaks traffic).
//!
//! [`classify`] is pure, over the bytes peeked so far.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

use super::ALPN;

/// The most bytes peeked: a ClientHello with a post-quantum key share is
/// over 1 KiB.
pub const PEEK_BYTES: usize = 4096;

/// What the first bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// A ClientHello offering `picket/1`: a sidecar's mTLS.
    Mesh,
    /// Something else: plaintext, or the app's own TLS.
    Other,
    /// Not enough bytes to tell yet.
    Incomplete,
}

/// Classifies the bytes a connection began with.
pub fn classify(bytes: &[u8]) -> FirstBytes {
    // A TLS handshake record: 0x16, then version 3.x.
    match bytes {
        [] | [0x16] => return FirstBytes::Incomplete,
        [0x16, 0x03, ..] => {}
        _ => return FirstBytes::Other,
    }
    let mut acceptor = Acceptor::default();
    let mut input = bytes;
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return FirstBytes::Other,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let offers = accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ALPN));
            if offers {
                FirstBytes::Mesh
            } else {
                FirstBytes::Other
            }
        }
        Ok(None) if bytes.len() < PEEK_BYTES => FirstBytes::Incomplete,
        Ok(None) | Err(_) => FirstBytes::Other,
    }
}

/// Peeks until the first bytes are classified, for at most `limit`.
/// `None`: the client sent too little within it (or closed, or failed).
pub async fn detect(stream: &TcpStream, limit: Duration) -> Option<FirstBytes> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; PEEK_BYTES];
    let mut seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        match classify(&buf[..n]) {
            FirstBytes::Incomplete => {}
            decided => return Some(decided),
        }
        // The rest of the ClientHello is still on its way: peek returns at
        // once while the bytes already here are unread, so wait a little
        // for more (rare: a ClientHello larger than one segment).
        if n == seen {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ClientHello a rustls client offering `alpn` sends.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = picket_test_support::certs::TestCa::root("x").unwrap();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            "example.com".try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_client_hello_offering_picket_is_the_mesh() {
        let hello = client_hello(&[b"h2", ALPN]);
        assert_eq!(classify(&hello), FirstBytes::Mesh);
        // Cut anywhere: not yet known.
        for cut in [1, 5, 40, hello.len() - 1] {
            assert_eq!(
                classify(&hello[..cut]),
                FirstBytes::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_apps_own_tls_and_plaintext_are_not() {
        assert_eq!(classify(&client_hello(&[b"h2"])), FirstBytes::Other);
        assert_eq!(classify(&client_hello(&[])), FirstBytes::Other);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::Other);
        assert_eq!(classify(&[0x16, 0x01, 0x00]), FirstBytes::Other);
        // A handshake record that is no ClientHello.
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
            FirstBytes::Other
        );
    }
}
