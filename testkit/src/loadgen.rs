//! A lean HTTP/1.1 load generator for benchmarks and the soak: pre-serialized requests over
//! keep-alive connections, a few microseconds of client work per request, so that on a 2-core
//! machine most of the CPU goes to the server being measured rather than to the client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One serialized request, e.g. from [`request`].
pub type Request = Vec<u8>;

pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// What a run saw.
#[derive(Default)]
pub struct Outcome {
    pub elapsed: Duration,
    /// Responses by status; status 0 counts transport errors (refused, reset, unparsable).
    pub statuses: BTreeMap<u16, u64>,
    /// Sorted latencies of complete responses.
    pub latencies: Vec<Duration>,
}

impl Outcome {
    pub fn completed(&self) -> u64 {
        self.latencies.len() as u64
    }
    pub fn rps(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p / 100.0) as usize).min(self.latencies.len() - 1);
        self.latencies[i]
    }
    /// Responses whose status is not in `ok`.
    pub fn unexpected(&self, ok: &[u16]) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !ok.contains(s))
            .map(|(_, n)| n)
            .sum()
    }
    pub fn statuses(&self) -> String {
        self.statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// When a run ends.
#[derive(Clone, Copy)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After each request of the list was sent once (requests are taken in order, shared by all
    /// connections, so distinct requests stay distinct).
    Once,
}

/// Sends `requests` over `connections` keep-alive connections. Without `Stop::Once` the list is
/// cycled. `pace` spaces a connection's requests (open-loop rate per connection) when set.
pub async fn run(
    addr: SocketAddr,
    requests: Arc<Vec<Request>>,
    connections: usize,
    stop: Stop,
    pace: Option<Duration>,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let requests = Arc::clone(&requests);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let req = match stop {
                    Stop::Once if i >= requests.len() => break,
                    Stop::Once => &requests[i],
                    Stop::After(d) if started.elapsed() >= d => break,
                    Stop::After(_) => &requests[i % requests.len()],
                };
                let sent = Instant::now();
                let stream = match conn.as_mut() {
                    Some(s) => s,
                    None => match TcpStream::connect(addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            conn.insert(s)
                        }
                        Err(_) => {
                            *out.statuses.entry(0).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                match exchange(stream, req, &mut buf).await {
                    Some((status, close)) => {
                        out.latencies.push(sent.elapsed());
                        *out.statuses.entry(status).or_default() += 1;
                        if close {
                            conn = None;
                        }
                    }
                    None => {
                        *out.statuses.entry(0).or_default() += 1;
                        conn = None;
                    }
                }
                if let Some(pace) = pace {
                    let due = sent + pace;
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for task in tasks {
        let Ok(out) = task.await else { continue };
        all.latencies.extend(out.latencies);
        for (s, n) in out.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
    }
    all.elapsed = started.elapsed();
    all.latencies.sort_unstable();
    all
}

/// Writes one request and reads one response; returns its status and whether the server will
/// close the connection.
async fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Option<(u16, bool)> {
    stream.write_all(req).await.ok()?;
    buf.clear();
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut length = 0usize;
    let mut close = false;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((status, close))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `a[i]` to `a_addr` then `b[i]` to `b_addr`, one request at a time over one connection to
/// each, so both series see the same moments of the machine's noise; for comparing a route with
/// what it calls.
pub async fn interleaved(
    a_addr: SocketAddr,
    a: &[Request],
    b_addr: SocketAddr,
    b: &[Request],
) -> (Outcome, Outcome) {
    let mut outcomes = (Outcome::default(), Outcome::default());
    let (Ok(mut sa), Ok(mut sb)) = (
        TcpStream::connect(a_addr).await,
        TcpStream::connect(b_addr).await,
    ) else {
        return outcomes;
    };
    let _ = (sa.set_nodelay(true), sb.set_nodelay(true));
    let mut buf = Vec::with_capacity(16 * 1024);
    let started = Instant::now();
    for (ra, rb) in a.iter().zip(b) {
        for (stream, req, out) in [
            (&mut sa, ra, &mut outcomes.0),
            (&mut sb, rb, &mut outcomes.1),
        ] {
            let sent = Instant::now();
            let status = exchange(stream, req, &mut buf).await.map_or(0, |(s, _)| s);
            out.latencies.push(sent.elapsed());
            *out.statuses.entry(status).or_default() += 1;
        }
    }
    for out in [&mut outcomes.0, &mut outcomes.1] {
        out.elapsed = started.elapsed();
        out.latencies.sort_unstable();
    }
    outcomes
}
