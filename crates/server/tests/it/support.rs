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
            "/api/v2/releases?version={version}&platform={platform}&kind={kind}"
        )))
        .admin()
        .body(body.to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}
