use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palette_server::ServerOptions;
use reqwest::header::AUTHORIZATION;

pub const ADMIN: &str = "admin-token-for-tests";
pub const AGENT: &str = "License-Key-0001";

pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// With `PALETTE_TEST_POSTGRES` (a server URL; `scripts/pg-test-cluster.sh`
/// starts one), every test server runs on PostgreSQL: a database of its
/// own per data folder (so a restarted server finds its data again), made
/// on first use. Without it, SQLite as always: one test body, two
/// backends.
pub async fn postgres_for(data: &Path) -> Option<String> {
    let base = std::env::var("PALETTE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())?;
    use sha2::Digest;
    let name = format!(
        "palette_{}",
        &hex::encode(sha2::Sha256::digest(data.to_string_lossy().as_bytes()))[..20]
    );
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PALETTE_TEST_POSTGRES answers");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .unwrap();
    if !exists {
        // The name is hex: safe to inline.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    let (head, _) = base.rsplit_once('/').expect("a URL with a database");
    Some(format!("{head}/{name}"))
}

/// Whether the tests run on PostgreSQL (tests of SQLite's own file, such as
/// a full disk under it or `backup`, say so and pass).
pub fn on_postgres() -> bool {
    std::env::var("PALETTE_TEST_POSTGRES").is_ok_and(|u| !u.is_empty())
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().to_path_buf();
        let mut s = Self::start_with(&data, |_| {}).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_with(data: &Path, tweak: impl FnOnce(&mut ServerOptions)) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = ServerOptions::new(data.to_path_buf(), addr);
        opts.database = postgres_for(data).await;
        opts.admin_token = Some(ADMIN.into());
        opts.agent_tokens = vec![AGENT.into()];
        tweak(&mut opts);
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(palette_server::serve_on(listener, opts, async {
            let _ = rx.await;
        }));
        let s = TestServer {
            url: format!("{scheme}://{addr}"),
            addr,
            data: data.to_path_buf(),
            _tmp: None,
            stop: Some(tx),
            task: Some(task),
        };
        if scheme == "http" {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while reqwest::get(format!("{}/api/v1/ping", s.url))
                .await
                .is_err()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "server did not come up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        s
    }

    /// Graceful stop: waits until the inventory is flushed.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self._tmp.take()
    }

    pub fn u(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The store identity the server answers check-ins with.
    pub async fn store_id(&self) -> String {
        let req = serde_json::json!({
            "host": {
                "hostname": "store-id-probe", "product": "agent",
                "platform": "linux-x86_64", "watchdog_version": "0.1.0",
                "agent_version": null, "agent_state": "running",
                "desired_state": "running"
            },
            "results": []
        });
        let res = http()
            .post(self.u("/api/v2/checkin?wait=0"))
            .admin()
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = res.json().await.unwrap();
        v["store_id"].as_str().unwrap().to_string()
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub trait Auth {
    fn agent(self) -> Self;
    fn admin(self) -> Self;
}

impl Auth for reqwest::RequestBuilder {
    fn agent(self) -> Self {
        self.header(AUTHORIZATION, format!("Token {AGENT}"))
    }
    fn admin(self) -> Self {
        self.header(AUTHORIZATION, format!("Bearer {ADMIN}"))
    }
}

/// Sending a request in a test: any transport error fails the test.
#[allow(async_fn_in_trait)]
pub trait Fetch {
    async fn go(self) -> reqwest::Response;
    async fn json_of<T: serde::de::DeserializeOwned>(self) -> T;
}

impl Fetch for reqwest::RequestBuilder {
    async fn go(self) -> reqwest::Response {
        self.send().await.unwrap()
    }
    async fn json_of<T: serde::de::DeserializeOwned>(self) -> T {
        self.go().await.json().await.unwrap()
    }
}

/// Publishes a release through the v2 API.
pub async fn publish(
    s: &TestServer,
    version: &str,
    platform: &str,
    kind: &str,
    body: &[u8],
) -> serde_json::Value {
    let res = http()
        .post(s.u(&format!(
            // Tests publish older versions on purpose (ordering); the 409
            // for that has its own test.
            "/api/v2/releases?version={version}&platform={platform}&kind={kind}&force=true"
        )))
        .admin()
        .body(body.to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

/// The real `palette-server` binary as a child process (for what needs a
/// process of its own: a file limit, kill -9).
pub struct BinServer {
    pub url: String,
    pub addr: SocketAddr,
    pub data: PathBuf,
    child: std::process::Child,
}

impl BinServer {
    /// Starts the binary on a free port with `args`, under a file limit of
    /// `nofile` (soft and hard) when given, and waits until it answers.
    pub async fn start(data: &Path, args: &[&str], nofile: Option<u64>) -> BinServer {
        Self::start_env(data, args, &[], nofile).await
    }

    /// As `start`, with environment variables.
    pub async fn start_env(
        data: &Path,
        args: &[&str],
        envs: &[(&str, String)],
        nofile: Option<u64>,
    ) -> BinServer {
        std::fs::create_dir_all(data).unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.log"))
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_palette-server");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = std::process::Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
            None => std::process::Command::new(bin),
        };
        cmd.arg("--data-dir")
            .arg(data)
            .args(["--listen", &addr.to_string()])
            .args(args)
            .env("PALETTE_ADMIN_TOKEN", ADMIN)
            .env("PALETTE_AGENT_TOKENS", AGENT)
            .env("PALETTE_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("palette-server starts");
        let s = BinServer {
            url: format!("http://{addr}"),
            addr,
            data: data.to_path_buf(),
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http().get(s.u("/api/v1/ping")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "palette-server did not come up; log: {}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    }

    pub fn u(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds, polling every 50 ms, failing after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A v2 check-in of `host` running agent 1.0.0 on linux-x86_64.
pub fn checkin_of(host: &str) -> palette_protocol::v2::CheckinRequest {
    use palette_protocol::v2::*;
    CheckinRequest {
        host: HostReport {
            hostname: host.into(),
            product: "agent".into(),
            platform: "linux-x86_64".into(),
            watchdog_version: "0.1.0".into(),
            agent_version: Some("1.0.0".parse().unwrap()),
            agent_state: AgentState::Running,
            desired_state: DesiredState::Running,
            config_revision: None,
            last_update: None,
            last_watchdog_update: None,
            local_trouble: None,
            update_progress: None,
            labels: Default::default(),
        },
        store_id: None,
        results: vec![],
        seen_release: None,
        seen_config: None,
        seen_watchdog_release: None,
    }
}

/// Checks in at the server `url` with the agent credential.
pub async fn checkin_at(
    url: &str,
    req: &palette_protocol::v2::CheckinRequest,
    wait: u64,
) -> palette_protocol::v2::CheckinResponse {
    let res = http()
        .post(format!("{url}/api/v2/checkin?wait={wait}"))
        .agent()
        .json(req)
        .go()
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// A bucket of its own on the S3-compatible test server that
/// `PALETTE_TEST_S3` names (`scripts/s3-test-server.sh` starts one).
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
}

/// A fresh bucket, or `None` without `PALETTE_TEST_S3`.
pub async fn s3_bucket() -> Option<S3> {
    let endpoint = std::env::var("PALETTE_TEST_S3")
        .ok()
        .filter(|u| !u.is_empty())?;
    let bucket = format!("palette-{}", hex::encode(rand_bytes()));
    let res = http()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("PALETTE_TEST_S3 answers");
    assert!(
        res.status().is_success(),
        "bucket not made: {}",
        res.status()
    );
    Some(S3 { endpoint, bucket })
}

fn rand_bytes() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish().to_le_bytes()
}

impl S3 {
    /// `--artifacts` for this bucket under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// What a server needs in its environment to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn object(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.bucket)
    }

    /// moto answers anonymous object requests with 403 but checks no
    /// signature: any SigV4 header stands for the test's own credentials.
    fn signed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header(
            AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
        )
    }

    /// An object's bytes, straight from the storage.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let res = self
            .signed(http().get(self.object(key)))
            .send()
            .await
            .unwrap();
        res.status()
            .is_success()
            .then_some(res.bytes().await.unwrap().to_vec())
    }

    pub async fn put(&self, key: &str, body: &[u8]) {
        let res = self
            .signed(http().put(self.object(key)))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }

    pub async fn delete(&self, key: &str) {
        let res = self
            .signed(http().delete(self.object(key)))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
}

/// Two replicas on one PostgreSQL database: the real binary and an
/// in-process server, both on `data`; `None` (the test says it skipped)
/// without PostgreSQL.
pub async fn replica_pair(data: &Path) -> Option<(BinServer, TestServer)> {
    if !on_postgres() {
        eprintln!("SKIPPED: replicas need PostgreSQL (PALETTE_TEST_POSTGRES)");
        return None;
    }
    let url = postgres_for(data).await.unwrap();
    let a = BinServer::start(data, &["--database", &url], None).await;
    let b = TestServer::start_with(data, |_| {}).await;
    Some((a, b))
}
