//! The original destination of a redirected connection (SO_ORIGINAL_DST and
//! IP6T_SO_ORIGINAL_DST), read through socket2's safe getters. The only
//! netfilter-aware code of the data plane.

use std::io;
use std::os::fd::AsFd;

use socket2::SockRef;

use super::{ClientAddr, OrigDstAddr};

/// Reads the address the client connected to before REDIRECT. The family is
/// the client's (each listener is of one family), which spares a getsockname.
pub fn orig_dst(stream: &impl AsFd, client: ClientAddr) -> io::Result<OrigDstAddr> {
    let sock = SockRef::from(stream);
    let addr = if client.0.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().map(OrigDstAddr).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

/// Resets a connection: zero linger, then close the whole socket, so the peer
/// reads ECONNRESET. (Closing by halves would send a FIN first.) Registered
/// with the runtime or not.
pub fn reset(stream: impl AsFd) {
    let _ = SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}
