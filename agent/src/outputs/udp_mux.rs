//! One UDP port for every WebRTC session (`outputs.webrtc.udp`), WHEP viewers and WHIP
//! publishers alike: one port to open in a firewall instead of an ephemeral one per session.
//!
//! Each session's ICE username fragment is its own (made here, handed to str0m), so a STUN
//! binding request names the session it is for (`USERNAME` = `<our ufrag>:<theirs>`); the
//! address it came from is then that session's, and its DTLS and SRTP datagrams follow the
//! address. Datagrams of unknown senders are dropped. Each session reads its datagrams from
//! a bounded channel (a full one drops, as a network would) and sends on the shared socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A datagram and where it came from.
pub(crate) type Datagram = (Vec<u8>, SocketAddr);

/// Datagrams a session's channel holds.
const QUEUE: usize = 512;
/// Addresses one session may be reached from (ICE candidate pairs).
const ADDRS_PER_SESSION: usize = 8;
/// The largest datagram read.
const MAX_DATAGRAM: usize = 2048;

/// The shared socket and the sessions it serves.
#[derive(Debug)]
pub struct UdpMux {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    routes: Mutex<Routes>,
    reader: tokio::task::AbortHandle,
}

#[derive(Debug, Default)]
struct Routes {
    by_ufrag: HashMap<String, mpsc::Sender<Datagram>>,
    by_addr: HashMap<SocketAddr, String>,
}

impl Drop for UdpMux {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl UdpMux {
    /// Listens on `addr` and starts reading (on the current tokio runtime).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Arc<UdpMux>> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let local = socket.local_addr()?;
        Ok(Arc::new_cyclic(|me: &Weak<UdpMux>| {
            let (me, reader_socket) = (me.clone(), socket.clone());
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let Ok((n, from)) = reader_socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    let Some(mux) = me.upgrade() else { return };
                    mux.dispatch(&buf[..n], from);
                }
            })
            .abort_handle();
            UdpMux {
                socket,
                local,
                routes: Mutex::default(),
                reader,
            }
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The socket sessions send on.
    pub(crate) fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// The datagrams for the session whose ICE username fragment is `ufrag`, until the
    /// returned route drops.
    pub(crate) fn route(self: &Arc<Self>, ufrag: String) -> Route {
        let (tx, rx) = mpsc::channel(QUEUE);
        lock(&self.routes).by_ufrag.insert(ufrag.clone(), tx);
        Route {
            mux: self.clone(),
            ufrag,
            rx,
        }
    }

    fn dispatch(&self, data: &[u8], from: SocketAddr) {
        let mut routes = lock(&self.routes);
        let ufrag = match stun_username(data) {
            Some(name) => {
                let ufrag = name.split(':').next().unwrap_or_default();
                if !routes.by_ufrag.contains_key(ufrag) {
                    return;
                }
                if !routes.by_addr.contains_key(&from) {
                    let known = routes.by_addr.values().filter(|u| *u == ufrag).count();
                    if known >= ADDRS_PER_SESSION {
                        return;
                    }
                    routes.by_addr.insert(from, ufrag.to_owned());
                }
                ufrag.to_owned()
            }
            None => match routes.by_addr.get(&from) {
                Some(u) => u.clone(),
                None => return,
            },
        };
        if let Some(tx) = routes.by_ufrag.get(&ufrag) {
            // Full: dropped, as a congested network would.
            let _ = tx.try_send((data.to_vec(), from));
        }
    }
}

/// A session's datagrams on the shared port; dropping it forgets the session.
#[derive(Debug)]
pub(crate) struct Route {
    mux: Arc<UdpMux>,
    ufrag: String,
    pub(crate) rx: mpsc::Receiver<Datagram>,
}

impl Route {
    pub(crate) fn mux(&self) -> &Arc<UdpMux> {
        &self.mux
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut routes = lock(&self.mux.routes);
        routes.by_ufrag.remove(&self.ufrag);
        routes.by_addr.retain(|_, u| *u != self.ufrag);
    }
}

/// The `USERNAME` of a STUN message (RFC 8489: type, length, the magic cookie, a
/// transaction id, then type-length-value attributes padded to 4 bytes), if `data` is one.
fn stun_username(data: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    // RFC 7983: a first byte of 0-3 is STUN (20-63 DTLS, 128-191 RTP and RTCP).
    if data.len() < 20 || data[0] > 3 || data[4..8] != MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let n = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + n)?;
        if kind == USERNAME {
            return std::str::from_utf8(value).ok();
        }
        at += 4 + n.div_ceil(4) * 4;
    }
    None
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request with `username` and one more attribute after it.
    fn binding(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn the_stun_username_is_read_and_anything_else_is_not_stun() {
        assert_eq!(stun_username(&binding("abcd:wxyz")), Some("abcd:wxyz"));
        assert_eq!(stun_username(&binding("abc:wx")), Some("abc:wx"));
        // DTLS (first byte 20-63) and RTP (128-191) are not STUN; a cut message is nothing.
        let mut dtls = binding("abcd:wxyz");
        dtls[0] = 22;
        assert_eq!(stun_username(&dtls), None);
        let m = binding("abcd:wxyz");
        assert_eq!(stun_username(&m[..m.len() - 12]), None);
        assert_eq!(stun_username(&[0; 10]), None);
    }

    #[tokio::test]
    async fn datagrams_reach_the_session_their_stun_request_named_and_strangers_none() {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut a = mux.route("aaaa".into());
        let mut b = mux.route("bbbb".into());
        let peer_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = mux.local_addr();
        // Before its STUN request, a peer's media goes nowhere.
        peer_a.send_to(b"\x80early", to).await.unwrap();
        peer_a.send_to(&binding("aaaa:pa"), to).await.unwrap();
        peer_b.send_to(&binding("bbbb:pb"), to).await.unwrap();
        stranger.send_to(&binding("zzzz:s"), to).await.unwrap();
        stranger.send_to(b"\x80stranger", to).await.unwrap();
        peer_a.send_to(b"\x80media-a", to).await.unwrap();
        peer_b.send_to(b"\x80media-b", to).await.unwrap();
        async fn next(r: &mut Route) -> Datagram {
            tokio::time::timeout(std::time::Duration::from_secs(5), r.rx.recv())
                .await
                .unwrap()
                .unwrap()
        }
        let (d, from) = next(&mut a).await;
        assert_eq!(
            (stun_username(&d), from),
            (Some("aaaa:pa"), peer_a.local_addr().unwrap())
        );
        assert_eq!(next(&mut a).await.0, b"\x80media-a");
        assert_eq!(stun_username(&next(&mut b).await.0), Some("bbbb:pb"));
        assert_eq!(next(&mut b).await.0, b"\x80media-b");
        assert!(a.rx.try_recv().is_err() && b.rx.try_recv().is_err());
        // A session gone: its peer's datagrams are dropped, the other's still flow.
        drop(a);
        assert!(lock(&mux.routes).by_addr.len() == 1);
        peer_a.send_to(b"\x80late-a", to).await.unwrap();
        peer_b.send_to(b"\x80more-b", to).await.unwrap();
        assert_eq!(next(&mut b).await.0, b"\x80more-b");
        // The session sends on the shared socket: the peer sees the shared port.
        mux.socket()
            .send_to(b"hello", peer_b.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = peer_b.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], to));
    }
}
