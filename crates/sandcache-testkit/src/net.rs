//! Servers that misbehave, on loopback.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An S3-like server whose objects all exist but whose downloads stall: a
/// listing is empty, a `HEAD` answers with headers, and a `GET` sends
/// `200 OK` headers for a large body, `prefix` of it, then goes silent while
/// holding the connection open.
pub async fn stalling_server(prefix: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = request.lines().next().unwrap_or_default().to_owned();
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\netag: \"stall\"\r\nlast-modified: Mon, 02 Jan 2006 15:04:05 GMT\r\ncontent-type: application/octet-stream\r\n\r\n";
                if line.contains("list-type=2") {
                    let body = r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    return;
                }
                let _ = sock.write_all(head.as_bytes()).await;
                if line.starts_with("HEAD") {
                    return;
                }
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

/// A container-credentials endpoint, as EKS Pod Identity serves it: answers
/// `GET` with the given keys when the `Authorization` header equals `token`,
/// 401 otherwise. Returns its URL and a count of authorised answers.
pub async fn credentials_server(
    token: String,
    key_id: String,
    secret: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (token, key_id, secret, counter) = (token.clone(), key_id.clone(), secret.clone(), counter.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let authorised = text.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == token)
                });
                let (status, body) = if authorised {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = format!(
                        r#"{{"AccessKeyId":"{key_id}","SecretAccessKey":"{secret}","Token":"","Expiration":"2099-01-01T00:00:00Z"}}"#
                    );
                    ("200 OK", body)
                } else {
                    ("401 Unauthorized", r#"{"message":"bad token"}"#.to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/v1/credentials"), hits)
}
