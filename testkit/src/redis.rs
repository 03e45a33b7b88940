//! Real `redis-server` processes for tests and benchmarks, each in a scratch directory removed on
//! drop: plain ([`RedisServer::start`]), TLS-only with a CA the test made
//! ([`RedisBuilder::tls`]), with an ACL user and the default user off ([`RedisBuilder::user`]),
//! and a three-node Redis Cluster ([`RedisCluster::start`]). Every server can be killed, paused
//! and restarted on the same port (and the same data directory) to test faults.
//!
//! Needs `redis-server` and `redis-cli` (Debian's `redis-server` and `redis-tools`, which
//! `scripts/test.sh` installs) and, for TLS, the `openssl` command.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The CA and server certificate of a TLS-only server (PEM files in its scratch directory). The
/// server certificate names `127.0.0.1` and `localhost`; clients are not asked for certificates.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to start one `redis-server`; from [`RedisServer::builder`].
#[derive(Debug, Default, Clone)]
pub struct RedisBuilder {
    port: Option<u16>,
    tls: bool,
    tls_files: Option<TlsFiles>,
    user: Option<(String, String)>,
    cluster: bool,
    args: Vec<String>,
}

impl RedisBuilder {
    /// Listen on this port (default: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// TLS only: `--port 0 --tls-port P`, with a fresh CA and server certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// TLS only, with these files (another server's: the nodes of a TLS cluster share one CA).
    pub fn tls_files(mut self, files: TlsFiles) -> Self {
        self.tls = true;
        self.tls_files = Some(files);
        self
    }

    /// An ACL user with every right (`on >password ~* &* +@all`); the default user is off, so
    /// a client that does not authenticate as this user can do nothing.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.user = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// A cluster node (`--cluster-enabled yes`); see [`RedisCluster`].
    pub fn cluster_node(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Any other `redis-server` argument, e.g. `--maxmemory`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Starts the server and waits until it accepts connections; panics when it cannot.
    pub fn start(self) -> RedisServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
    }

    /// As [`RedisBuilder::start`], with an error instead of a panic (e.g. to skip a benchmark
    /// where `redis-server` is not installed).
    pub fn try_start(self) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(format!("testkit-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = match self.port {
            Some(port) => port,
            None if self.cluster => cluster_port(),
            None => free_port(),
        };
        let tls = match self.tls_files {
            Some(files) => Some(files),
            None if self.tls => Some(make_certificates(&dir)?),
            None => None,
        };
        let mut args: Vec<String> = Vec::new();
        let mut push = |a: &[&str]| args.extend(a.iter().map(|s| (*s).to_owned()));
        match &tls {
            Some(files) => push(&[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &files.cert.display().to_string(),
                "--tls-key-file",
                &files.key.display().to_string(),
                "--tls-ca-cert-file",
                &files.ca.display().to_string(),
                "--tls-auth-clients",
                "no",
            ]),
            None => push(&["--port", &port.to_string()]),
        }
        push(&[
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
            "--logfile",
            &dir.join("redis.log").display().to_string(),
        ]);
        if let Some((name, password)) = &self.user {
            push(&["--user", "default", "off"]);
            push(&[
                "--user",
                name,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ]);
        }
        if self.cluster && tls.is_some() {
            // The cluster bus over TLS too (a TLS-only node has no plain port to derive it from).
            push(&["--tls-cluster", "yes"]);
        }
        if self.cluster {
            push(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        args.extend(self.args);
        let mut server = RedisServer {
            port,
            dir,
            args,
            tls,
            user: self.user,
            child: None,
        };
        server.try_restart()?;
        Ok(server)
    }
}

/// One `redis-server` process, killed and its directory removed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    tls: Option<TlsFiles>,
    user: Option<(String, String)>,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server on a free loopback port: no TLS, no password.
    pub fn start() -> RedisServer {
        Self::builder().start()
    }

    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// The port clients connect to (the TLS port of a TLS-only server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:P`, or `rediss://…` for a TLS server; no credentials in it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// [`RedisServer::url`] with the ACL user's name and password in it, when there is one.
    pub fn url_with_credentials(&self) -> String {
        match &self.user {
            Some((name, password)) => {
                self.url()
                    .replacen("://", &format!("://{name}:{password}@"), 1)
            }
            None => self.url(),
        }
    }

    /// The CA, certificate and key of a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The ACL user's name and password.
    pub fn user(&self) -> Option<(&str, &str)> {
        self.user.as_ref().map(|(n, p)| (n.as_str(), p.as_str()))
    }

    /// The server's scratch directory (certificates, log, cluster state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still there.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: the server is gone at once, connections reset (an outage).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server holds its connections and answers nothing (a hang). Undo with
    /// [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Starts the server again, on the same port with the same arguments and directory (a killed
    /// cluster node rejoins its cluster).
    pub fn restart(&mut self) {
        self.try_restart()
            .unwrap_or_else(|e| panic!("redis-server did not start: {e}"));
    }

    fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("redis-server is not installed (scripts/test.sh installs it): {e}")
            })?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if !self.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        self.kill();
        Err(format!(
            "not listening on port {}; its log:\n{log}",
            self.port
        ))
    }

    /// `redis-cli` for this server: port, `--tls --cacert`, `--user --pass` as needed.
    pub fn cli_command(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        if let Some((name, password)) = &self.user {
            cmd.args(["--user", name, "--pass", password, "--no-auth-warning"]);
        }
        cmd
    }

    /// Runs `redis-cli` with these arguments; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self
            .cli_command()
            .args(args)
            .output()
            .expect("redis-cli is installed (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `EVAL` + `EVALSHA` calls this server has answered (`INFO commandstats`).
    pub fn script_calls(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback, slots spread by
/// `redis-cli --cluster create`, `cluster_state:ok` on every node before it is handed out.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three plain nodes.
    pub fn start() -> RedisCluster {
        Self::start_with(RedisServer::builder)
    }

    /// Three nodes from `builder` (e.g. `|| RedisServer::builder().tls().user("app", "pw")`);
    /// each is made a cluster node on a port whose bus port (+10000) is free. TLS nodes share the
    /// first node's CA and certificate.
    pub fn start_with(builder: impl Fn() -> RedisBuilder) -> RedisCluster {
        let mut nodes = vec![builder().cluster_node().start()];
        let shared_tls = nodes[0].tls().cloned();
        for _ in 1..3 {
            let node = match &shared_tls {
                Some(files) => builder().tls_files(files.clone()),
                None => builder(),
            };
            nodes.push(node.cluster_node().start());
        }
        let mut create = nodes[0].cli_command();
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = output_within(create, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    /// Waits until every running node says `cluster_state:ok`; panics after `limit`.
    pub fn wait_ok(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let states: Vec<String> = self
                .nodes
                .iter()
                .map(|n| n.cli(&["cluster", "info"]))
                .collect();
            if states.iter().all(|s| s.contains("cluster_state:ok")) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the cluster never became ok: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A node, to kill, pause or restart it.
    pub fn node_mut(&mut self, n: usize) -> &mut RedisServer {
        &mut self.nodes[n]
    }

    /// Every node's URL (a cluster client takes them as seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis-cli -c` (following redirections) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.nodes[0]
            .cli_command()
            .arg("-c")
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Runs `cmd` to its end, killing it after `limit` (`redis-cli --cluster create` waits forever
/// for nodes that cannot reach each other).
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed (scripts/test.sh installs it)");
    let started = Instant::now();
    while matches!(child.try_wait(), Ok(None)) && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("redis-cli output")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port of at most 55535 whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// A CA and a server certificate for `127.0.0.1` / `localhost` signed by it (P-256, one day),
/// made with the `openssl` command in `dir`. The certificate is for clients too: cluster nodes
/// present it to each other on the TLS cluster bus, and the OTLP receiver asks the broker for it.
pub fn make_certificates(dir: &Path) -> Result<TlsFiles, String> {
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .map_err(|e| e.to_string())?;
    let p = |path: &Path| path.display().to_string();
    let ca_key = p(&dir.join("ca.key"));
    let csr = p(&dir.join("server.csr"));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=testkit CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &ca_key,
            "-out",
            &p(&files.ca),
        ]
        .iter()
        .chain(&ec)
        .map(|s| (*s).to_owned())
        .collect(),
        [
            "req",
            "-new",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &p(&files.key),
            "-out",
            &csr,
        ]
        .iter()
        .chain(&ec)
        .map(|s| (*s).to_owned())
        .collect(),
        [
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &p(&files.ca),
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&files.cert),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .map_err(|e| format!("the openssl command is needed for a TLS server: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(files)
}

/// The broker's limits shared through the Redis at `url` (`cluster`: one node of a cluster), as
/// `serve` builds them from `[rate_limit]` (`rate_limit`, JSON) and a `[redis]` section that denies
/// while Redis is down; returned once `broker_redis_up` reads 1. For tests and benchmarks that
/// drive the limiter directly, with many concurrent callers.
pub async fn shared_limits(
    url: &str,
    cluster: bool,
    rate_limit: serde_json::Value,
) -> (
    std::sync::Arc<intellia_token_broker::testing::Limits>,
    std::sync::Arc<intellia_token_broker::testing::Metrics>,
) {
    use intellia_token_broker::testing::Limits;
    use intellia_token_broker::testing::Metrics;
    use intellia_token_broker::testing::RedisStore;
    use intellia_token_broker::testing::{RateLimitSettings, RedisSettings};
    use std::sync::Arc;

    let redis: RedisSettings = serde_json::from_value(serde_json::json!({
        "url": url,
        "on_unavailable": "deny",
        "timeout_ms": 1000,
        "key_prefix": "shared-limits",
        "cluster": cluster,
    }))
    .expect("a valid [redis] section");
    let metrics = Arc::new(Metrics::new());
    let store = RedisStore::start(&redis, None, Arc::clone(&metrics)).expect("a Redis store");
    let started = Instant::now();
    while !metrics.encode().lines().any(|l| l == "broker_redis_up 1") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Redis at {url} never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settings: RateLimitSettings =
        serde_json::from_value(rate_limit).expect("a valid [rate_limit] section");
    (Arc::new(Limits::new(&settings, Some(store), 1)), metrics)
}
