//! Shared harness of the end-to-end tests: the demo binary as a real child
//! process (killed when the test ends or panics), and a small HTTP client that
//! answers `(status, JSON)` with enough context for a readable failure.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hidra_test_support::{b64url_decode, b64url_encode};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long the binary may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one HTTP request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo's seeded password (zero-setup and `--demo-data`).
pub const DEMO_PASSWORD: &str = "demo-password";

/// Environment variables the binary reads; removed from its environment unless
/// a test sets them, so that the caller's environment cannot change a test.
const DEMO_ENV: &[&str] = &[
    "DATABASE_URL",
    "PORT",
    "HIDRA_DEMO_DATA",
    "HIDRA_DEMO_ADMIN_TOKEN",
    "HIDRA_BASE_DOMAIN",
    "JWT_SECRET",
    "HOST",
    "LOG_FORMAT",
    "HIDRA_LOCAL_PG_URL",
    "HIDRA_TOKEN_TTL",
    "HIDRA_WARM_POOL",
    "HIDRA_MAX_CONNECTIONS",
    "HIDRA_LOGIN_FAILURES",
    "HIDRA_SIGNUPS_PER_HOUR",
    "HIDRA_AUTH_RATE",
    "HIDRA_POOLER_URL",
    "HIDRA_API_KEY_PEPPER",
    "HIDRA_DEMO_CORS_ORIGINS",
    "RUST_LOG",
];

/// The output of the child, kept for failure messages.
#[derive(Clone, Debug, Default)]
pub struct Output {
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Output {
    /// Everything the child printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The last `lines` lines of stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let all = self.stderr();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// A block for failure messages: the tail of the child's stderr.
    pub fn context(&self) -> String {
        format!(
            "\n----- hidra-demo stderr (last 40 lines) -----\n{}\n----- end of stderr -----",
            self.stderr_tail(40)
        )
    }
}

/// One HTTP answer.
#[derive(Clone, Debug)]
pub struct Resp {
    /// The request method.
    pub method: Method,
    /// The request path (with query).
    pub path: String,
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The raw body.
    pub text: String,
    /// The body as JSON, `Value::Null` when it is empty or not JSON.
    pub json: Value,
    /// Whether the body parsed as JSON.
    pub is_json: bool,
}

impl Resp {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `"error"` code of an error body.
    pub fn error_code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("<no error code>")
    }

    /// The field names of a `validation_failed` body.
    pub fn fields(&self) -> BTreeSet<String> {
        self.json["fields"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut body = self.text.clone();
        if body.len() > 2000 {
            let mut cut = 2000;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push('…');
        }
        write!(
            f,
            "{} {} -> {} {}",
            self.method, self.path, self.status, body
        )
    }
}

/// A request body.
#[derive(Clone, Debug)]
pub enum Body {
    /// No body.
    None,
    /// A JSON body.
    Json(Value),
    /// Bytes with a content type (for malformed bodies).
    Raw(&'static str, Vec<u8>),
}

/// An HTTP client bound to one running demo; cheap to clone into tasks.
#[derive(Clone, Debug)]
pub struct Api {
    /// `http://ip:port`.
    pub base: String,
    /// The client.
    pub client: reqwest::Client,
    /// The child's output, for failure messages.
    pub output: Output,
    /// Responses seen without an `x-request-id` header.
    missing_request_id: Arc<Mutex<Vec<String>>>,
    /// Responses seen.
    responses: Arc<AtomicUsize>,
}

impl Api {
    fn new(base: String, output: Output) -> Api {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build a reqwest client");
        Api {
            base,
            client,
            output,
            missing_request_id: Arc::default(),
            responses: Arc::default(),
        }
    }

    /// Sends a request; transport errors are returned.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Resp, reqwest::Error> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(content_type, bytes) => req.header("content-type", content_type).body(bytes),
        };
        let response = req.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let parsed = serde_json::from_str::<Value>(&text);
        let is_json = parsed.is_ok();
        let resp = Resp {
            method,
            path: path.to_owned(),
            status,
            headers,
            text,
            json: parsed.unwrap_or(Value::Null),
            is_json,
        };
        self.responses.fetch_add(1, Ordering::Relaxed);
        if resp.header("x-request-id").is_none_or(str::is_empty) {
            self.missing_request_id
                .lock()
                .unwrap()
                .push(format!("{} {} -> {}", resp.method, resp.path, resp.status));
        }
        Ok(resp)
    }

    /// Sends a request; a transport error fails the test.
    #[track_caller]
    pub fn send<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        token: Option<&'a str>,
        headers: &'a [(&'a str, &'a str)],
        body: Body,
    ) -> impl Future<Output = Resp> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            match self
                .try_send(method.clone(), path, token, headers, body)
                .await
            {
                Ok(r) => r,
                Err(e) => panic!(
                    "{method} {path} failed: {e:?} (called at {caller}){}",
                    self.output.context()
                ),
            }
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::GET, path, token, &[], Body::None).await
    }

    /// `GET path` with extra headers.
    pub async fn get_with(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.send(Method::GET, path, token, headers, Body::None)
            .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(Method::POST, path, token, &[], Body::Json(body))
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(Method::PATCH, path, token, &[], Body::Json(body))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::DELETE, path, token, &[], Body::None)
            .await
    }

    /// Fails the test unless `resp` has `status`; returns its JSON body.
    #[track_caller]
    pub fn expect(&self, resp: &Resp, status: u16) -> Value {
        if resp.status != status {
            panic!("expected {status}, got: {resp}{}", self.output.context());
        }
        resp.json.clone()
    }

    /// Fails the test unless `resp` has one of `statuses`.
    #[track_caller]
    pub fn expect_any(&self, resp: &Resp, statuses: &[u16]) -> Value {
        if !statuses.contains(&resp.status) {
            panic!(
                "expected one of {statuses:?}, got: {resp}{}",
                self.output.context()
            );
        }
        resp.json.clone()
    }

    /// Fails the test unless `resp` is `status` with `{"error": code}`.
    #[track_caller]
    pub fn expect_error(&self, resp: &Resp, status: u16, code: &str) {
        self.expect(resp, status);
        if !resp.is_json || resp.error_code() != code {
            panic!(
                "expected a JSON body with \"error\": \"{code}\", got: {resp}{}",
                self.output.context()
            );
        }
    }

    /// Fails the test unless `resp` is a 422 `validation_failed` naming `field`.
    #[track_caller]
    pub fn expect_invalid(&self, resp: &Resp, field: &str) {
        self.expect_error(resp, 422, "validation_failed");
        if !resp.fields().contains(field) {
            panic!(
                "expected `fields` to name {field:?}, got: {resp}{}",
                self.output.context()
            );
        }
    }

    /// `POST /signup`.
    pub async fn signup(
        &self,
        tenant: &str,
        company: &str,
        email: &str,
        full_name: &str,
        password: &str,
    ) -> Resp {
        self.post(
            "/signup",
            None,
            json!({
                "tenant": tenant,
                "company": company,
                "email": email,
                "full_name": full_name,
                "password": password,
            }),
        )
        .await
    }

    /// `POST /login`.
    pub async fn login(&self, email: &str, password: &str) -> Resp {
        self.post(
            "/login",
            None,
            json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Logs in and returns the token, failing the test otherwise.
    #[track_caller]
    pub fn login_ok<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
    ) -> impl Future<Output = String> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let r = self.login(email, password).await;
            if r.status != 200 {
                panic!(
                    "login of {email} (called at {caller}): expected 200, got {r}{}",
                    self.output.context()
                );
            }
            r.json["token"]
                .as_str()
                .unwrap_or_else(|| panic!("login answer without a token: {r}"))
                .to_owned()
        }
    }

    /// Every item of a paginated list (`limit=100`, following `offset`),
    /// failing the test on anything but 200.
    #[track_caller]
    pub fn list_all<'a>(
        &'a self,
        path: &'a str,
        token: &'a str,
    ) -> impl Future<Output = Vec<Value>> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let mut items = Vec::new();
            let sep = if path.contains('?') { '&' } else { '?' };
            loop {
                let page = format!("{path}{sep}limit=100&offset={}", items.len());
                let r = self.get(&page, Some(token)).await;
                if r.status != 200 {
                    panic!(
                        "listing (called at {caller}): expected 200, got {r}{}",
                        self.output.context()
                    );
                }
                let batch = r.json["items"]
                    .as_array()
                    .unwrap_or_else(|| panic!("a list without `items`: {r}"))
                    .clone();
                let total = r.json["total"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a list without `total`: {r}"));
                let done = batch.is_empty();
                items.extend(batch);
                if done || items.len() as u64 >= total {
                    return items;
                }
            }
        }
    }

    /// The `(id, name)` pairs of a whole list.
    pub async fn id_names(&self, path: &str, token: &str) -> BTreeMap<i64, String> {
        self.list_all(path, token)
            .await
            .iter()
            .map(|item| {
                (
                    item["id"].as_i64().expect("an item id"),
                    item["name"].as_str().expect("an item name").to_owned(),
                )
            })
            .collect()
    }

    /// The number of responses seen, and those without `x-request-id`.
    pub fn request_id_report(&self) -> (usize, Vec<String>) {
        (
            self.responses.load(Ordering::Relaxed),
            self.missing_request_id.lock().unwrap().clone(),
        )
    }
}

/// The demo binary running as a child process. Dropping it (also when a test
/// panics) sends SIGTERM, waits a little, then kills the process.
#[derive(Debug)]
pub struct Demo {
    /// The HTTP side.
    pub api: Api,
    /// The address from the listening line.
    pub addr: SocketAddr,
    /// The child.
    child: Child,
    /// Its pid.
    pid: u32,
    /// The tasks reading its stdout and stderr; they end at the pipes' end.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for Demo {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Forwards the lines of a child's pipe into `sink`; the first line that starts
/// with `listening on ` is also sent through `ready`.
fn drain<R>(
    pipe: R,
    sink: Arc<Mutex<String>>,
    mut ready: Option<oneshot::Sender<String>>,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
            if line.starts_with("listening on ")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(line);
            }
        }
    })
}

/// Waits until `readers` have read their pipes to the end (the process has
/// exited or been killed), at most `READERS_TIMEOUT`.
async fn drained(readers: &mut Vec<tokio::task::JoinHandle<()>>) {
    const READERS_TIMEOUT: Duration = Duration::from_secs(10);
    let all = futures_util::future::join_all(readers.drain(..));
    let _ = tokio::time::timeout(READERS_TIMEOUT, all).await;
}

impl Demo {
    /// Starts the binary with `DATABASE_URL` set to `database_url` (or removed
    /// when `None`) and `args`, and waits for its listening line.
    pub async fn start(database_url: Option<&str>, args: &[&str]) -> Demo {
        Demo::start_with(database_url, args, &[]).await
    }

    /// [`start`](Demo::start) with extra environment variables.
    pub async fn start_with(
        database_url: Option<&str>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hidra-demo"));
        for var in DEMO_ENV {
            cmd.env_remove(var);
        }
        if let Some(url) = database_url {
            cmd.env("DATABASE_URL", url);
        }
        // Every request of a test comes from 127.0.0.1: only the tests of
        // the limits run under the real ones (they pass their own).
        cmd.env("HIDRA_SIGNUPS_PER_HOUR", "1000000")
            .env("HIDRA_AUTH_RATE", "1000000");
        for (name, value) in envs {
            cmd.env(name, value);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn the hidra-demo binary");
        let pid = child.id().expect("the child's pid");
        let output = Output::default();
        let (tx, rx) = oneshot::channel();
        let mut readers = vec![
            drain(
                child.stdout.take().expect("piped stdout"),
                output.stdout.clone(),
                Some(tx),
            ),
            drain(
                child.stderr.take().expect("piped stderr"),
                output.stderr.clone(),
                None,
            ),
        ];
        let line = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(line)) => line,
            outcome => {
                let status = child.try_wait().ok().flatten();
                let _ = child.start_kill();
                // Every line it wrote, before reporting.
                drained(&mut readers).await;
                let why = match (outcome, status) {
                    (Err(_), _) => format!("no listening line within {START_TIMEOUT:?}"),
                    (_, Some(status)) => format!("the process exited first ({status})"),
                    _ => "stdout closed before the listening line".to_owned(),
                };
                panic!(
                    "hidra-demo {args:?} did not start: {why}\n----- stdout -----\n{}{}",
                    output.stdout(),
                    output.context()
                );
            }
        };
        let rest = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!("the listening line is not `listening on http://<ip>:<port>`: {line:?}")
            });
        let addr: SocketAddr = rest.parse().unwrap_or_else(|e| {
            panic!("the listening line {line:?} has no <ip>:<port> after http:// ({e})")
        });
        assert_eq!(
            line,
            format!("listening on http://{addr}"),
            "the listening line must be exactly `listening on http://<ip>:<port>`"
        );
        assert_ne!(addr.port(), 0, "the listening line must name the real port");
        Demo {
            api: Api::new(format!("http://{addr}"), output),
            addr,
            child,
            pid,
            readers,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal (`TERM`, `INT`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Every last line read, for the test's checks of the output.
                drained(&mut self.readers).await;
                status
            }
            Ok(Err(e)) => panic!("waiting for hidra-demo: {e}"),
            Err(_) => panic!(
                "hidra-demo did not exit within {timeout:?}{}",
                self.output.context()
            ),
        }
    }

    /// Sends `signal` and expects a clean exit (code 0) within 30 s.
    pub async fn shut_down(&mut self, signal: &str) {
        self.signal(signal);
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "hidra-demo must exit with code 0 after SIG{signal}, got {status}{}",
            self.output.context()
        );
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A polite stop first, so that a zero-setup demo drops its database.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status();
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "hidra-demo (pid {}) stdout:\n{}{}",
                self.pid,
                self.output.stdout(),
                self.output.context()
            );
        }
    }
}

/// A database connection pool for checks in PostgreSQL.
pub async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The payload of a JWT as JSON.
pub fn jwt_payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&b64url_decode(part)).expect("a JWT payload is JSON")
}

/// `token` with its payload replaced by `payload`, signature kept.
pub fn jwt_with_payload(token: &str, payload: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    format!(
        "{}.{}.{}",
        parts[0],
        b64url_encode(payload.to_string().as_bytes()),
        parts[2]
    )
}
