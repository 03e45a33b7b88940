//! Web sites the broker asks who a visitor is (`[[session.endpoint]]`):
//!
//! - [`SiteProcess`]: the real sites of `tests/sites/` as child processes — express-session with
//!   its Redis store, and Flask with Flask-Login over Flask-Session — with a [`Visitor`] that
//!   signs in and out through their own routes and keeps their cookies as a browser would.
//! - [`HostileSite`]: a site that misbehaves on purpose (huge, slow, redirecting, odd answers)
//!   and records what the broker sent it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Installs the sites once per test process (`tests/sites/run.sh --install-only`).
fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join("tests/sites/run.sh"))
            .arg("--install-only")
            .status()
            .expect("run tests/sites/run.sh --install-only");
        assert!(status.success(), "the test sites could not be installed");
    });
}

/// Which real site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// express + express-session + connect-redis: cookie `connect.sid`, `GET /api/me` answers
    /// `{"id", "email", "name", "roles": [..]}`, the page route `/api/me-or-login` redirects.
    Express,
    /// Flask + Flask-Login + Flask-Session: cookie `session`, `GET /api/me` answers
    /// `{"user": {"id", "email", "name"}, "roles": {"<role>": true}}`, `/account` redirects.
    Flask,
}

impl Framework {
    pub fn cookie(self) -> &'static str {
        match self {
            Framework::Express => "connect.sid",
            Framework::Flask => "session",
        }
    }

    /// The pointers of its `/api/me` answer: (user id, e-mail, name, roles).
    pub fn pointers(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Framework::Express => ("/id", "/email", "/name", "/roles"),
            Framework::Flask => ("/user/id", "/user/email", "/user/name", "/roles"),
        }
    }

    /// A route that answers a visitor without a session with a login redirect.
    pub fn page_route(self) -> &'static str {
        match self {
            Framework::Express => "/api/me-or-login",
            Framework::Flask => "/account",
        }
    }

    /// Its `[[session.endpoint]]` table, asking `path`.
    pub fn endpoint_toml(self, base: &str, path: &str, extra: &str) -> String {
        let (id, email, name, roles) = self.pointers();
        format!(
            "\n[[session.endpoint]]\nurl = \"{base}{path}\"\ncookies = [\"{}\"]\nuser_id_pointer = \"{id}\"\nemail_pointer = \"{email}\"\nname_pointer = \"{name}\"\nroles_pointer = \"{roles}\"\n{extra}\n",
            self.cookie()
        )
    }
}

/// A real site as a child process; it exits with this process (its stdin is our pipe).
pub struct SiteProcess {
    child: Child,
    pub framework: Framework,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
}

impl SiteProcess {
    /// Starts the site on a free port with its sessions in the Redis at `redis_url`.
    pub fn start(framework: Framework, redis_url: &str) -> SiteProcess {
        install();
        let mut command = match framework {
            Framework::Express => {
                let mut c = Command::new("node");
                c.arg(repo().join("tests/sites/express/server.mjs"));
                c
            }
            Framework::Flask => {
                let mut c = Command::new(repo().join(".venv-sites/bin/python"));
                c.arg(repo().join("tests/sites/flask/app.py"));
                c
            }
        };
        let mut child = command
            .args(["--port", "0", "--redis", redis_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test site");
        let line = crate::process::ready_line(
            &mut child,
            &format!("the {framework:?} site"),
            Duration::from_secs(60),
        );
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{framework:?} site did not start ({e}): {line:?}"));
        SiteProcess {
            child,
            framework,
            url: ready["url"].as_str().expect("url").to_owned(),
            http: crate::app::http_client(),
        }
    }

    /// A new visitor of this site (a browser with an empty cookie jar).
    pub fn visitor(&self) -> Visitor {
        Visitor {
            site: self.url.clone(),
            cookies: Vec::new(),
            http: self.http.clone(),
        }
    }

    /// What every `/api/me` (or page-route) request carried, in order.
    pub async fn received(&self) -> Vec<Value> {
        self.http
            .get(format!("{}/__received", self.url))
            .send()
            .await
            .expect("GET /__received")
            .json()
            .await
            .expect("a JSON list")
    }

    /// Stops the site (the broker then finds nobody listening).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A browser's view of one site: the cookies it set.
#[derive(Clone)]
pub struct Visitor {
    site: String,
    /// `name=value` pairs, as the site set them.
    cookies: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Visitor {
    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for set in response.headers().get_all("set-cookie") {
            let Some((pair, attributes)) = set
                .to_str()
                .ok()
                .map(|s| s.split_once(';').unwrap_or((s, "")))
            else {
                continue;
            };
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            self.cookies.retain(|(n, _)| n != name);
            let expired = attributes
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if !expired && !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// Signs in as `user` with `roles` through the site's own login route.
    pub async fn sign_in(&mut self, user: &str, roles: &[&str]) {
        let response = self
            .http
            .post(format!("{}/login", self.site))
            .header("cookie", self.cookie_header())
            .json(&json!({"user": user, "roles": roles}))
            .send()
            .await
            .expect("POST /login");
        assert!(
            response.status().is_success(),
            "login: {}",
            response.status()
        );
        self.keep_cookies(&response);
        assert!(!self.cookies.is_empty(), "the site set no session cookie");
    }

    /// Signs out through the site's own logout route, keeping the cookie as a careless client
    /// (or an attacker who copied it) would.
    pub async fn sign_out_keeping_cookie(&self) {
        let response = self
            .http
            .post(format!("{}/logout", self.site))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("POST /logout");
        assert!(
            response.status().is_success(),
            "logout: {}",
            response.status()
        );
    }

    /// The `Cookie` header this visitor's browser sends to the site's domain.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The value of one of its cookies.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What one request to a [`HostileSite`] carried.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Every header, lower-case names, in order.
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A session endpoint that misbehaves on purpose, by path:
///
/// - `/me`: a cookie (any name) or a Bearer token `user-<id>` (or `user-<id>.<nonce>`) is signed
///   in as `<id>`; anything
///   else 401. `/me-slow` the same after 300 ms.
/// - `/flip`: each call names the next user (`u0`, `u1`, …) whatever it is sent.
/// - `/huge`: 200 with 8 MiB of JSON-ish bytes; `/huge-declared` declares 100 MB and trickles.
/// - `/slow`: answers after 5 s; `/slow-body`: headers at once, then a byte a second.
/// - `/redirect-away`: 302 to the [`HostileSite::elsewhere`] server, which counts its hits;
///   `/redirect-tab`: 302 to a `Location` with a tab in it.
/// - `/object-id`, `/empty-id`, `/array-id`, `/float-id`: 200 with such an `id`.
/// - `/not-json`: 200 HTML. `/status/<n>`: that status.
pub struct HostileSite {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Requests by path, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Requests that reached the other host a redirect points at.
    pub elsewhere_hits: Arc<AtomicUsize>,
    pub elsewhere: String,
}

impl HostileSite {
    pub fn start() -> HostileSite {
        let elsewhere_hits = Arc::new(AtomicUsize::new(0));
        let elsewhere = serve({
            let hits = elsewhere_hits.clone();
            move |_req: HttpRequest| {
                hits.fetch_add(1, Ordering::SeqCst);
                async { HttpResponse::Ok().json(json!({"id": "elsewhere"})) }
            }
        });
        let received = Arc::new(Mutex::new(Vec::new()));
        let flips = Arc::new(AtomicUsize::new(0));
        let target = format!("{elsewhere}/me");
        let base = serve({
            let received = received.clone();
            move |req: HttpRequest| {
                let path = req.path().to_owned();
                received.lock().unwrap().push(Received {
                    path: path.clone(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                });
                let (flips, target) = (flips.clone(), target.clone());
                async move { hostile_answer(&req, &path, &flips, &target).await }
            }
        });
        HostileSite {
            base,
            received,
            elsewhere_hits,
            elsewhere,
        }
    }

    /// Requests made to `path`.
    pub fn calls(&self, path: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn last(&self, path: &str) -> Option<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.path == path)
            .cloned()
    }
}

fn signed_in_user(req: &HttpRequest) -> Option<String> {
    let from_cookie = req
        .headers()
        .get_all("cookie")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(_, v)| v.starts_with("user-"))
        .map(|(_, v)| v.to_owned());
    let from_bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let id = from_cookie.or(from_bearer)?;
    let id = id.strip_prefix("user-")?;
    // `user-<id>.<anything>`: many distinct cookies of one user (a benchmark's first requests).
    Some(id.split('.').next().unwrap_or(id).to_owned())
}

async fn hostile_answer(
    req: &HttpRequest,
    path: &str,
    flips: &AtomicUsize,
    target: &str,
) -> HttpResponse {
    let me = || match signed_in_user(req) {
        Some(id) => {
            HttpResponse::Ok().json(json!({"id": id, "email": format!("{id}@example.net")}))
        }
        None => HttpResponse::Unauthorized().json(json!({"error": "signed out"})),
    };
    match path {
        "/me" => me(),
        "/me-slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            me()
        }
        "/flip" => {
            let n = flips.fetch_add(1, Ordering::SeqCst);
            HttpResponse::Ok().json(json!({"id": format!("u{n}")}))
        }
        "/huge" => {
            let chunk = web::Bytes::from(vec![b' '; 64 * 1024]);
            let head = web::Bytes::from_static(b"{\"id\": \"big\", \"pad\": \"");
            let body = futures_util::stream::iter(
                std::iter::once(head)
                    .chain(std::iter::repeat_n(chunk, 128))
                    .map(Ok::<_, std::io::Error>),
            );
            HttpResponse::Ok()
                .content_type("application/json")
                .streaming(body)
        }
        "/huge-declared" => {
            let body = futures_util::stream::unfold(0u32, |n| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                (n < 600).then(|| {
                    (
                        Ok::<_, std::io::Error>(web::Bytes::from_static(b" ")),
                        n + 1,
                    )
                })
            });
            HttpResponse::Ok()
                .content_type("application/json")
                .no_chunking(100_000_000)
                .streaming(body)
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            me()
        }
        "/slow-body" => {
            let body = futures_util::stream::unfold(0u32, |n| async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                (n < 30).then(|| {
                    let part: &'static [u8] = if n == 0 { b"{\"id\": \"slow" } else { b" " };
                    (
                        Ok::<_, std::io::Error>(web::Bytes::from_static(part)),
                        n + 1,
                    )
                })
            });
            HttpResponse::Ok()
                .content_type("application/json")
                .streaming(body)
        }
        "/redirect-tab" => HttpResponse::Found()
            .insert_header(("location", "/login?next=\t/api/me"))
            .finish(),
        "/redirect-away" => HttpResponse::Found()
            .insert_header(("location", target.to_owned()))
            .finish(),
        "/object-id" => HttpResponse::Ok().json(json!({"id": {"id": "u-1"}})),
        "/empty-id" => HttpResponse::Ok().json(json!({"id": ""})),
        "/array-id" => HttpResponse::Ok().json(json!({"id": ["u-1"]})),
        "/float-id" => HttpResponse::Ok().json(json!({"id": 1.5})),
        "/not-json" => HttpResponse::Ok()
            .content_type("text/html")
            .body("<html>Welcome</html>"),
        other => match other
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| actix_web::http::StatusCode::from_u16(s).ok())
        {
            Some(status) => HttpResponse::build(status).json(json!({"id": "should-not-count"})),
            None => HttpResponse::NotFound().finish(),
        },
    }
}

/// Serves `handler` for every request on a free port, on the calling runtime; returns the base URL.
fn serve<F, Fut>(handler: F) -> String
where
    F: Fn(HttpRequest) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = HttpResponse> + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let handler = handler.clone();
        App::new().default_service(web::to(move |req: HttpRequest| handler.clone()(req)))
    })
    .workers(2)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}
