//! The real broker binary as a child process, for tests that need the process itself (signals,
//! exit codes, what it prints, file descriptors, memory) and for the benchmarks.

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The broker binary cargo built beside the test or bench running now (`target/<profile>/`): a test
/// binary lives in `target/<profile>/deps/`.
pub fn broker_bin() -> PathBuf {
    // A benchmark can measure another build (e.g. the one before a change) in the same run.
    if let Some(bin) =
        std::env::var_os("BROKER_BIN").filter(|_| std::env::args().any(|a| a == "--bench"))
    {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps/");
    let bin = profile_dir.join("intellia-token-broker");
    assert!(
        bin.is_file(),
        "{} does not exist: cargo builds it for integration tests and benches of the broker",
        bin.display()
    );
    bin
}

/// Runs the binary to completion with `args` and `env` (never `$BROKER_CONFIG`); returns its exit
/// code, stdout and stderr.
pub fn run_broker(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(broker_bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BROKER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with `args` for at most `limit`: a `serve` that ought to refuse to start must
/// fail a test, not hang it, when it starts after all. Returns the exit code (`None`: it was still
/// running and was killed) and stderr.
pub fn run_broker_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(broker_bin())
        .args(args)
        .env_remove("BROKER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap_or_default())
}

/// The one line a fixture process (OpenID provider, test site, OTLP receiver) prints on stdout
/// once it listens. A fixture that hangs while starting fails its test after `within` (its child
/// killed) instead of holding the whole run until CI's limit.
pub fn ready_line(child: &mut Child, what: &str, within: Duration) -> String {
    let stdout = child.stdout.take().expect("the fixture's stdout is piped");
    let (sent, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = sent.send(read.map(|_| line));
    });
    match received.recv_timeout(within) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("{what}: reading its ready line: {e}"),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} printed no ready line within {within:?} (killed)")
        }
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Open file descriptors (sockets included) of a process right now; 0 once it is gone.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Waits until `GET path` answers 200; returns how long that took from `since`, or `None` after
/// `limit`.
pub async fn wait_ok(
    addr: SocketAddr,
    path: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await
            && s.write_all(req.as_bytes()).await.is_ok()
        {
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).await.is_ok() && &head[9..12] == b"200" {
                return Some(since.elapsed());
            }
        }
        if since.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Where a process's stdout and stderr go.
enum Output {
    /// Into memory, drained by one thread per stream (tests read it all at the end).
    Captured {
        text: Arc<Mutex<String>>,
        readers: Vec<JoinHandle<()>>,
    },
    /// Into files (benchmarks: hours of logs stay out of memory).
    Files { stdout: PathBuf, stderr: PathBuf },
}

/// The real binary (`serve`, or any other subcommand such as `simulate-intellia`), killed on drop.
pub struct BrokerProcess {
    child: Child,
    pub base: String,
    pub addr: SocketAddr,
    /// The backend and admin listeners, as its "broker listening" line names them.
    pub backend: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    output: Output,
}

impl BrokerProcess {
    /// `serve --config {dir}/config.toml` at the given `RUST_LOG` level, its output captured; the
    /// address is the one its "broker listening" line names.
    pub fn serve(dir: &Path, rust_log: &str) -> BrokerProcess {
        let mut cmd = Command::new(broker_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(dir.join("config.toml"));
        Self::spawn_captured(cmd, rust_log)
    }

    /// As [`BrokerProcess::serve`], with a file-size limit of zero: the kernel kills a process
    /// that writes a single byte to any file (pipes and sockets are not files), so a broker that
    /// keeps running has written nothing to disk.
    pub fn serve_without_file_writes(dir: &Path, rust_log: &str) -> BrokerProcess {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -f 0 && ulimit -c 0 && exec "$0" "$@""#)
            .arg(broker_bin())
            .arg("serve")
            .arg("--config")
            .arg(dir.join("config.toml"));
        Self::spawn_captured(cmd, rust_log)
    }

    /// Runs `cmd` with everything it prints captured, and waits (up to 20 s) for its "broker
    /// listening" line.
    pub fn spawn_captured(mut cmd: Command, rust_log: &str) -> BrokerProcess {
        let mut child = cmd
            .env("RUST_LOG", rust_log)
            .env_remove("BROKER_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let (text, addr_tx) = (Arc::clone(&text), addr_tx.clone());
            readers.push(std::thread::spawn(move || {
                // Byte lines, not `lines()`: one invalid UTF-8 byte must not stop the draining,
                // or the broker would block on a full pipe.
                let mut reader = std::io::BufReader::new(stream);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let chunk = String::from_utf8_lossy(&line);
                    if chunk.contains("\"broker listening\"")
                        && let Ok(v) = serde_json::from_str::<Value>(&chunk)
                        && let Some(listen) = v["listen"].as_str()
                    {
                        let other = |name: &str| v[name].as_str().map(str::to_owned);
                        let _ = addr_tx.send((listen.to_owned(), other("backend"), other("admin")));
                    }
                    text.lock().unwrap().push_str(&chunk);
                    line.clear();
                }
            }));
        }
        let Ok((addr, backend, admin)) = addr_rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the broker did not start: {}",
                text.lock().unwrap().as_str()
            );
        };
        let addr: SocketAddr = addr.parse().unwrap();
        BrokerProcess {
            child,
            base: format!("http://{addr}"),
            addr,
            backend: backend.map(|b| b.parse().unwrap()),
            admin: admin.map(|a| a.parse().unwrap()),
            output: Output::Captured { text, readers },
        }
    }

    /// Runs `cmd`, which will listen on `addr`, with stdout and stderr written to these files and
    /// `RUST_LOG` unset unless `cmd` sets it; returns at once (wait with [`wait_ok`]).
    pub fn spawn_to_files(
        mut cmd: Command,
        addr: SocketAddr,
        stdout: &Path,
        stderr: &Path,
    ) -> BrokerProcess {
        let file = |path: &Path| Stdio::from(std::fs::File::create(path).expect("log file"));
        // The caller's RUST_LOG stands (a benchmark runs at `warn`, as the issue's numbers were
        // taken); only the one this process inherited is dropped.
        if !cmd.get_envs().any(|(name, _)| name == "RUST_LOG") {
            cmd.env_remove("RUST_LOG");
        }
        let child = cmd
            .env_remove("BROKER_CONFIG")
            .stdout(file(stdout))
            .stderr(file(stderr))
            .spawn()
            .expect("start the broker binary");
        BrokerProcess {
            child,
            base: format!("http://{addr}"),
            addr,
            backend: None,
            admin: None,
            output: Output::Files {
                stdout: stdout.to_owned(),
                stderr: stderr.to_owned(),
            },
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A URL on the backend listener, the only one serving the sidecar route.
    pub fn backend_url(&self, path: &str) -> String {
        let addr = self
            .backend
            .expect("this broker has a backend listener ([backend])");
        format!("http://{addr}{path}")
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let addr = self
            .admin
            .expect("this broker has an admin listener (server.admin_listen)");
        format!("http://{addr}{path}")
    }

    /// Everything printed so far (stderr first when it went to files).
    pub fn output(&self) -> String {
        match &self.output {
            Output::Captured { text, .. } => text.lock().unwrap().clone(),
            Output::Files { stdout, stderr } => {
                std::fs::read_to_string(stderr).unwrap_or_default()
                    + &std::fs::read_to_string(stdout).unwrap_or_default()
            }
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits for the exit (blocking); returns the status and everything printed.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Output::Captured { readers, .. } = &mut self.output {
            for reader in std::mem::take(readers) {
                let _ = reader.join();
            }
        }
        (status, self.output())
    }

    /// SIGTERM, then [`BrokerProcess::wait`] off the async runtime.
    pub async fn stop(self) -> (ExitStatus, String) {
        self.sigterm();
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .unwrap()
    }

    /// Open file descriptors of the process right now.
    pub fn open_fds(&self) -> usize {
        open_fds(self.pid())
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        crate::procfs::status_bytes(&self.pid().to_string(), "VmRSS")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // A failed test must not leave a broker running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
