//! Servers that misbehave, on loopback.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server that answers every request with `200 OK` headers for a
/// large body, sends `prefix` of it, then goes silent while holding the
/// connection open: a stalled download.
pub async fn stalling_server(prefix: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let head: &str = "HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\netag: \"stall\"\r\nlast-modified: Mon, 02 Jan 2006 15:04:05 GMT\r\ncontent-type: application/octet-stream\r\n\r\n";
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&prefix).await;
                // Hold the connection, send nothing more.
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                drop(sock);
            });
        }
    });
    addr
}

/// A server that accepts connections and never answers at all.
pub async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            held.push(sock);
        }
    });
    addr
}
