//! The HTTP side: `/health`, refused handshakes with their status codes, the connection limit,
//! and a handshake split over TCP segments (served by hyper rather than read directly).

use crate::support::{token, TestServer, DEFAULT_LIMITS, READ_TIMEOUT};
use anyhow::{bail, Context as _, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `parts` (with a pause between them) and returns the response head and what followed.
async fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> Result<(String, Vec<u8>, TcpStream)> {
    let mut tcp = TcpStream::connect(addr).await?;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tcp.write_all(part).await?;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let rest = got[end + 4..].to_vec();
            return Ok((head, rest, tcp));
        }
        let n = tokio::time::timeout(READ_TIMEOUT, tcp.read(&mut buf)).await.context("response")??;
        if n == 0 {
            bail!("connection closed after {:?}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn upgrade_request(version: &str, key: Option<&str>) -> String {
    let key = key.map(|k| format!("Sec-WebSocket-Key: {k}\r\n")).unwrap_or_default();
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}Sec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// A masked client text frame.
fn client_text(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let payload = text.as_bytes();
    let mut out = vec![0x81];
    assert!(payload.len() < 65_536);
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test]
async fn health_and_refused_handshakes_get_their_status() -> Result<()> {
    let server = TestServer::default().await?;
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (head, mut body, mut tcp) = exchange(server.addr, &[request]).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::timeout(READ_TIMEOUT, tcp.read_to_end(&mut body)).await??;
    assert_eq!(String::from_utf8_lossy(&body), "Rhizome: OK\n");

    let (head, _, _) = exchange(server.addr, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await?;
    assert!(head.starts_with("HTTP/1.1 404"), "plain GET: {head}");

    let (head, _, _) =
        exchange(server.addr, &[upgrade_request("8", Some("AAAAAAAAAAAAAAAAAAAAAA==")).as_bytes()]).await?;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");

    let (head, _, _) = exchange(server.addr, &[upgrade_request("13", None).as_bytes()]).await?;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_handshake_split_over_segments_still_opens_a_working_socket() -> Result<()> {
    let server = TestServer::default().await?;
    let request = upgrade_request("13", Some("dGhlIHNhbXBsZSBub25jZQ=="));
    let (first, second) = request.as_bytes().split_at(30);
    let (head, rest, mut tcp) = exchange(server.addr, &[first, second]).await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "accept key: {head}");
    assert!(rest.is_empty());
    let connect =
        format!(r#"["connect",5,"alice:c1:t1",0,{{"token":"{}","subprotocol":1}}]"#, token("alice"));
    tcp.write_all(&client_text(&connect)).await?;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(READ_TIMEOUT, tcp.read(&mut buf)).await??;
    assert!(n > 2 && buf[0] == 0x81, "a text frame: {:?}", &buf[..n]);
    let text = String::from_utf8_lossy(&buf[2..n]);
    assert!(text.starts_with(r#"["connected",5,"#), "{text}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_others_are_served() -> Result<()> {
    let server = TestServer::start(&format!("{DEFAULT_LIMITS}\nconnections_max = 1")).await?;
    let _alice = server.login("alice:c1:t1").await?;
    let (head, _, _) =
        exchange(server.addr, &[upgrade_request("13", Some("dGhlIHNhbXBsZSBub25jZQ==")).as_bytes()]).await?;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nretry-after: 2\r\n"), "a retry hint: {head}");
    server.stop().await;
    Ok(())
}
