//! The HTTP side of the load generator, for Rhizome's `POST /v1/push` and `POST /v1/pull`
//! (`docs/http.md`): producers that push batches over keep-alive HTTP/1.1 connections, and idle
//! clients that each hold a long-poll open.

use crate::{now_ms, random_part, BenchArgs, BenchError};
use rhizome_protocol::{IdGenerator, NodeId};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `host:port` of the server, from its `ws://` or `http://` URL.
pub(crate) fn authority(url: &str) -> Result<String, BenchError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| BenchError::Protocol(format!("--http needs a ws:// or http:// URL, not {url}")))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// One keep-alive HTTP/1.1 connection that sends JSON `POST`s, one at a time.
pub(crate) struct HttpConn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl HttpConn {
    pub(crate) async fn connect(host: &str) -> Result<HttpConn, BenchError> {
        let stream = TcpStream::connect(host).await.map_err(BenchError::Io)?;
        stream.set_nodelay(true).map_err(BenchError::Io)?;
        Ok(HttpConn { stream, host: host.to_owned(), buf: Vec::with_capacity(16 * 1024) })
    }

    /// Sends the request and returns the status and body of the answer.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        token: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), BenchError> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.map_err(BenchError::Io)?;
        self.stream.write_all(body.as_bytes()).await.map_err(BenchError::Io)?;
        loop {
            if let Some(answer) = self.take_answer()? {
                return Ok(answer);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await.map_err(BenchError::Io)?;
            if n == 0 {
                return Err(BenchError::Protocol("the server closed the HTTP connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A whole answer from the buffer, if one arrived (head and `Content-Length` body).
    fn take_answer(&mut self) -> Result<Option<(u16, Vec<u8>)>, BenchError> {
        let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
        let head = std::str::from_utf8(&self.buf[..end]).map_err(|e| BenchError::Protocol(e.to_string()))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Protocol(format!("no status in {head:?}")))?;
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| BenchError::Protocol(format!("no Content-Length in {head:?}")))?;
        let total = end + 4 + length;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf[end + 4..total].to_vec();
        self.buf.drain(..total);
        Ok(Some((status, body)))
    }
}

/// What one HTTP producer did.
pub(crate) struct HttpProducerResult {
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) undone: usize,
}

/// Pushes `args.actions` actions in requests of `args.batch`, one request in flight, and
/// times each action from its request to the answer (which comes once it is committed).
pub(crate) async fn producer(
    args: std::sync::Arc<BenchArgs>,
    index: usize,
    start: std::sync::Arc<tokio::sync::Barrier>,
) -> Result<HttpProducerResult, BenchError> {
    let host = authority(&args.url)?;
    let mut conn = HttpConn::connect(&host).await?;
    let node = NodeId::from(format!("p{index}:{}:{}", random_part(), random_part()));
    let mut ids = IdGenerator::new(node.clone());
    let counter = match args.channel {
        crate::ChannelMode::Own => format!("p{index}"),
        crate::ChannelMode::Shared => "1".to_owned(),
    };
    start.wait().await;
    let mut latencies_us = Vec::with_capacity(args.actions);
    let mut undone = 0;
    let mut sent = 0;
    while sent < args.actions {
        let k = (args.actions - sent).min(args.batch.max(1));
        let now = now_ms();
        let mut body = format!("{{\"node\":\"{node}\",\"actions\":[");
        for i in 0..k {
            if i > 0 {
                body.push(',');
            }
            let id = ids.next(now);
            body.push_str(&format!(
                "{{\"action\":{{\"type\":\"inc\",\"id\":\"{counter}\"}},\"meta\":{{\"id\":\"{id}\",\"time\":{now}}}}}"
            ));
        }
        body.push_str("]}");
        let t = Instant::now();
        let (status, answer) = conn.post("/v1/push", &args.token, &body).await?;
        if status != 200 {
            return Err(BenchError::Protocol(format!(
                "push answered {status}: {}",
                String::from_utf8_lossy(&answer)
            )));
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| BenchError::Protocol(e.to_string()))?;
        let results = answer["results"].as_array().map_or(0, Vec::len);
        if results != k {
            return Err(BenchError::Protocol(format!("{results} results for {k} actions")));
        }
        let us = t.elapsed().as_micros() as u64;
        for result in answer["results"].as_array().into_iter().flatten() {
            if result["status"] == "processed" {
                latencies_us.push(us);
            } else {
                undone += 1;
            }
        }
        sent += k;
    }
    Ok(HttpProducerResult { latencies_us, undone })
}

/// Opens `count` clients that each hold a long-poll `POST /v1/pull` open on its own channel
/// (asking again when one ends), waits `args.idle_secs`, and reports the server's memory per
/// client and its CPU during the wait.
pub(crate) async fn idle(args: &BenchArgs, count: usize) -> Result<(), BenchError> {
    let host = authority(&args.url)?;
    let pid = args.pid;
    let before = pid.map(crate::rss_kib).transpose()?;
    let t0 = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), BenchError>>(count.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    // In waves, as the WebSocket's idle clients connect: thousands of connects at once
    // overflow the listen backlog.
    const WAVE: usize = 100;
    let mut ready = 0;
    for i in 0..count {
        if i > 0 && i % WAVE == 0 {
            while ready < i {
                match ready_rx.recv().await {
                    Some(Ok(())) => ready += 1,
                    Some(Err(e)) => return Err(e),
                    None => return Err(BenchError::Protocol("an idle HTTP client ended early".into())),
                }
            }
        }
        let host = host.clone();
        let token = args.token.clone();
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let node = format!("h{i}:{}:{}", random_part(), random_part());
            let first = format!("{{\"node\":\"{node}\",\"channels\":[\"counter/h{i}\"]}}");
            let setup = async {
                let mut conn = HttpConn::connect(&host).await?;
                let (status, body) = conn.post("/v1/pull", &token, &first).await?;
                if status != 200 {
                    return Err(BenchError::Protocol(format!("pull answered {status}")));
                }
                let body: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| BenchError::Protocol(e.to_string()))?;
                Ok((conn, body["cursor"].as_str().unwrap_or("0").to_owned()))
            };
            let (mut conn, mut cursor) = match setup.await {
                Ok(ok) => ok,
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return;
                }
            };
            let _ = ready.send(Ok(())).await;
            loop {
                let poll = format!(
                    "{{\"node\":\"{node}\",\"channels\":[\"counter/h{i}\"],\"cursor\":\"{cursor}\",\"wait\":25}}"
                );
                let Ok((200, body)) = conn.post("/v1/pull", &token, &poll).await else { return };
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else { return };
                cursor = body["cursor"].as_str().unwrap_or("0").to_owned();
            }
        });
    }
    drop(ready_tx);
    while ready < count {
        match ready_rx.recv().await {
            Some(Ok(())) => ready += 1,
            Some(Err(e)) => return Err(e),
            None => return Err(BenchError::Protocol("an idle HTTP client ended early".into())),
        }
    }
    let connect_ms = t0.elapsed().as_millis();
    // Every client's first pull answered; give their long-polls a moment to be sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = pid.map(cpu_ticks).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.idle_secs.max(1))).await;
    let after = pid.map(crate::rss_kib).transpose()?;
    let cpu_after = pid.map(cpu_ticks).transpose()?;
    match (before, after, cpu_before, cpu_after) {
        (Some(b), Some(a), Some(c0), Some(c1)) => println!(
            "bench: idle http long-polls={count} connect_ms={connect_ms} rss_before_kib={b} rss_after_kib={a} kib_per_conn={:.2} idle_cpu_ms={}",
            (a as f64 - b as f64) / count as f64,
            (c1 - c0) * 10
        ),
        _ => println!("bench: idle http long-polls={count} connect_ms={connect_ms} (no --pid: memory not measured)"),
    }
    tasks.abort_all();
    Ok(())
}

/// User+system CPU ticks (1/100 s) of process `pid`.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(BenchError::Memory)?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Ok(ticks(11) + ticks(12))
}
