//! Test support for end-to-end runs: starts the real `palette-server`,
//! `palette-watchdog` (with `palette-manager` and `palette-sample-agent` in
//! its install folder) as separate processes on loopback, builds release
//! archives, and waits on conditions with deadlines.
//!
//! The binaries are taken from the cargo target folder this test runs from;
//! build them first (`cargo build --workspace`, part of the README's test
//! command).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use palette_protocol::v2::{CommandKind, CommandStatus, HostInfo, NewCommand, Outcome, Target};

pub const ADMIN: &str = "e2e-admin-token";
pub const AGENT_KEY: &str = "e2e-license-key";

/// The folder holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    for b in [
        "palette-server",
        "palette-watchdog",
        "palette-manager",
        "palette-sample-agent",
        "palettectl",
    ] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: run `cargo build --workspace` before the tests",
            dir.join(b).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {:?} waiting for: {what}", limit);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes whose command line contains every one of `needles`.
pub fn find_processes(needles: &[&str]) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            needles.iter().all(|n| cmd.contains(n))
        })
        .collect()
}

pub fn alive(pid: u32) -> bool {
    // A zombie still answers signal 0; /proc tells them apart.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sigterm_and_wait(child: &mut Child, limit: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns a program that was just copied into place. Another test thread
/// forking while the copy's write handle was open keeps that handle until
/// its child execs, and exec then fails with ETXTBSY ("text file busy"):
/// retried for a moment, as that window is short.
pub fn spawn_fresh_copy(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Ok(c) => return c,
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{:?} does not start: {e}", cmd.get_program()),
        }
    }
}

/// Runs `exe --version` (10 s at most; a binary that hangs is killed) and
/// returns the version after `name`.
pub fn version_of(exe: &Path, name: &str) -> Option<String> {
    let mut child = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix(&format!("{name} "))
        .map(str::to_string)
}

/// A real `palette-server` process.
pub struct Server {
    pub url: String,
    pub port: u16,
    pub data: PathBuf,
    child: Option<Child>,
    client: reqwest::Client,
}

impl Server {
    pub async fn start(data: &Path) -> Server {
        Self::start_on(data, free_port()).await
    }

    pub async fn start_on(data: &Path, port: u16) -> Server {
        Self::start_with(data, port, None, None, &[], &[]).await
    }

    /// With extra arguments and environment variables.
    pub async fn start_args(
        data: &Path,
        port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        Self::start_with(data, port, None, None, args, envs).await
    }

    /// An HTTPS server with `cert` and `key` (PEM files), reachable as
    /// `https://localhost:<port>` by clients that trust `ca_pem`.
    pub async fn start_tls(data: &Path, cert: &Path, key: &Path, ca_pem: &str) -> Server {
        Self::start_with(data, free_port(), Some((cert, key, ca_pem)), None, &[], &[]).await
    }

    /// As `start_tls`, requiring client certificates issued by the CA in
    /// `client_ca` (mutual TLS); this harness's own client presents
    /// `identity_pem` (certificate and key, PEM).
    pub async fn start_mtls(
        data: &Path,
        (cert, key, ca_pem): (&Path, &Path, &str),
        client_ca: &Path,
        identity_pem: &str,
    ) -> Server {
        Self::start_with(
            data,
            free_port(),
            Some((cert, key, ca_pem)),
            Some((client_ca, identity_pem)),
            &[],
            &[],
        )
        .await
    }

    async fn start_with(
        data: &Path,
        port: u16,
        tls: Option<(&Path, &Path, &str)>,
        mtls: Option<(&Path, &str)>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.log"))
            .unwrap();
        let mut cmd = Command::new(bin("palette-server"));
        cmd.args([
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]);
        // Idle connections are not reused past 10 s: the server closes
        // them after 20 s, and a large upload written into a connection it
        // just closed fails with a broken pipe.
        let mut client = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(10));
        let mut url = format!("http://127.0.0.1:{port}");
        if let Some((cert, key, ca)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            client =
                client.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
            url = format!("https://localhost:{port}");
        }
        if let Some((client_ca, identity)) = mtls {
            cmd.arg("--client-ca").arg(client_ca);
            client = client.identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap());
        }
        let client = client.build().unwrap();
        let child = cmd
            .args(args)
            .envs(envs.iter().copied())
            .env("PALETTE_ADMIN_TOKEN", ADMIN)
            .env("PALETTE_AGENT_TOKENS", AGENT_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("palette-server starts");
        let s = Server {
            url,
            port,
            data: data.into(),
            child: Some(child),
            client: client.clone(),
        };
        let url = format!("{}/api/v1/ping", s.url);
        wait_for("the server answers /ping", Duration::from_secs(20), || {
            let (url, client) = (url.clone(), client.clone());
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await
        .unwrap();
        s
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm_and_wait(&mut c, Duration::from_secs(10));
        }
    }

    pub fn api(&self) -> Api {
        Api {
            server_log: self.data.join("server.log"),
            url: self.url.clone(),
            http: self.client.clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The operator's view of the server's v2 API.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
    /// The server's log, quoted when a request fails.
    pub server_log: PathBuf,
}

impl Api {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{}", self.url, path))
            .bearer_auth(ADMIN)
    }

    pub async fn command(&self, kind: CommandKind, host: &str) -> i64 {
        let body = NewCommand {
            kind,
            target: Target::Hosts(vec![host.into()]),
            ttl_secs: None,
        };
        let res = self
            .req(reqwest::Method::POST, "/api/v2/commands")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json::<CommandStatus>().await.unwrap().command.id
    }

    pub async fn command_status(&self, id: i64) -> CommandStatus {
        self.req(reqwest::Method::GET, &format!("/api/v2/commands/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits for `host`'s acknowledgement of command `id`.
    pub async fn ack(&self, id: i64, limit: Duration) -> (Outcome, String) {
        let mut found = None;
        let deadline = Instant::now() + limit;
        while found.is_none() {
            let st = self.command_status(id).await;
            found = st.results.first().map(|a| (a.outcome, a.message.clone()));
            assert!(
                Instant::now() < deadline || found.is_some(),
                "no acknowledgement of command {id} within {limit:?}"
            );
            if found.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        found.unwrap()
    }

    /// Every command the server lists (newest first).
    pub async fn commands(&self) -> Vec<serde_json::Value> {
        self.req(reqwest::Method::GET, "/api/v2/commands")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn host(&self, host: &str) -> Option<HostInfo> {
        let res = self
            .req(reqwest::Method::GET, &format!("/api/v2/hosts/{host}"))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            res.json().await.ok()
        } else {
            None
        }
    }

    pub async fn publish(&self, archive: &Path, version: &str, kind: &str) -> serde_json::Value {
        self.publish_product(archive, "agent", version, kind).await
    }

    pub async fn publish_product(
        &self,
        archive: &Path,
        product: &str,
        version: &str,
        kind: &str,
    ) -> serde_json::Value {
        let body = std::fs::read(archive).unwrap();
        let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
        let res = self
            .req(
                reqwest::Method::POST,
                &format!("/api/v2/releases?product={product}&version={version}&platform={platform}&kind={kind}"),
            )
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("publishing {product} {version}: {e:?}\n--- server log ---\n{}", self.server_log_tail()));
        assert_eq!(res.status(), 201, "{}", self.server_log_tail());
        res.json().await.unwrap()
    }

    /// The last lines of the server's log.
    pub fn server_log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.server_log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub async fn push_config(&self, host: &str, body: &str) -> serde_json::Value {
        let res = self
            .req(
                reqwest::Method::POST,
                &format!("/api/v2/hosts/{host}/configs"),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub async fn configs(&self, host: &str) -> Vec<palette_protocol::v2::ConfigRevision> {
        self.req(
            reqwest::Method::GET,
            &format!("/api/v2/hosts/{host}/configs"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    }

    pub async fn latest_config(&self, host: &str, source: &str) -> Option<String> {
        let res = self
            .req(
                reqwest::Method::GET,
                &format!("/api/v2/hosts/{host}/configs/latest?source={source}"),
            )
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            Some(res.text().await.unwrap())
        } else {
            None
        }
    }

    /// A legacy v1 operator write (`PUT /api/v1/command`).
    pub async fn v1_command(&self, word: &str) {
        let res = self
            .req(reqwest::Method::PUT, "/api/v1/command")
            .form(&[("command", word)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    /// A legacy v1 operator config upload.
    pub async fn v1_put_config(&self, host: &str, body: &str) {
        let part =
            reqwest::multipart::Part::bytes(body.as_bytes().to_vec()).file_name("Config.yml");
        let form = reqwest::multipart::Form::new().part("uploadfile", part);
        let res = self
            .req(
                reqwest::Method::PUT,
                &format!("/api/v1/config?hostname={host}"),
            )
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

/// A config file for the sample agent pointing at `url`.
pub fn agent_config(url: &str, key: &str, extra: &str) -> String {
    format!("# Palette Insight Agent configuration\nLicenseKey: {key}\nWebservice:\n  Endpoint: {url}\n  UseProxy: false\n{extra}")
}

/// A release archive (tar.gz) of the sample agent as `version`; with
/// `fail`, the agent exits shortly after starting (fails its health check).
pub fn release_archive(dir: &Path, version: &str, fail: bool) -> PathBuf {
    release_archive_with(dir, version, fail, 0)
}

/// Like `release_archive`, with an extra incompressible file of `pad_mib`
/// MiB (a release that takes the manager a while to verify and unpack).
pub fn release_archive_with(dir: &Path, version: &str, fail: bool, pad_mib: usize) -> PathBuf {
    let path = dir.join(format!(
        "agent-{version}{}.tar.gz",
        if fail { "-fail" } else { "" }
    ));
    let f = std::fs::File::create(&path).unwrap();
    let level = if pad_mib > 0 {
        flate2::Compression::none()
    } else {
        flate2::Compression::fast()
    };
    let gz = flate2::write::GzEncoder::new(f, level);
    let mut b = tar::Builder::new(gz);
    b.append_path_with_name(bin("palette-sample-agent"), "palette-sample-agent")
        .unwrap();
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("VERSION", version.as_bytes());
    if fail {
        add("FAIL", b"fail the health check");
    }
    if pad_mib > 0 {
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let pad: Vec<u8> = (0..pad_mib * 1024 * 128)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        add("padding.bin", &pad);
    }
    b.into_inner().unwrap().finish().unwrap();
    path
}

/// A small release of the sample agent as `version` that unpacks to more
/// than `unpacked_mib` MiB (a file of zeros, which gzip shrinks ~1000×, plus
/// 1 MiB that does not compress, so that it stays within the 100× ratio).
pub fn release_archive_expanding(dir: &Path, version: &str, unpacked_mib: u64) -> PathBuf {
    let path = dir.join(format!("agent-{version}-expanding.tar.gz"));
    let f = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append_path_with_name(bin("palette-sample-agent"), "palette-sample-agent")
        .unwrap();
    let mut add = |name: &str, size: u64, data: &mut dyn std::io::Read| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("VERSION", version.len() as u64, &mut version.as_bytes());
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let noise: Vec<u8> = (0..128 * 1024)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    add("noise.bin", noise.len() as u64, &mut noise.as_slice());
    let zeros = unpacked_mib << 20;
    add(
        "zeros.bin",
        zeros,
        &mut std::io::Read::take(std::io::repeat(0), zeros),
    );
    b.into_inner().unwrap().finish().unwrap();
    path
}

/// A release of the sample agent as `version` with `files` extra small
/// files (4 KiB each, in folders of 100): one that takes a while to unpack.
pub fn release_archive_many(dir: &Path, version: &str, files: usize) -> PathBuf {
    let path = dir.join(format!("agent-{version}-many.tar.gz"));
    let f = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append_path_with_name(bin("palette-sample-agent"), "palette-sample-agent")
        .unwrap();
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("VERSION", version.as_bytes());
    let body = vec![b'x'; 4096];
    for i in 0..files {
        add(&format!("data/{:03}/{i:05}.dat", i / 100), &body);
    }
    b.into_inner().unwrap().finish().unwrap();
    path
}

/// What a watchdog release carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogBuild {
    /// The real watchdog and manager, stamped with the release's version.
    Good,
    /// A watchdog that exits at once (a script standing in for a build that
    /// crashes on start).
    ExitsAtOnce,
    /// A watchdog that runs but never checks in (a script that only waits).
    NeverChecksIn,
    /// The real watchdog with a manager that cannot run.
    BrokenManager,
    /// A watchdog that runs, never checks in and ignores SIGTERM (a shell
    /// that traps it).
    IgnoresSigterm,
    /// The real, unstamped binaries: they report the workspace's version,
    /// not the release's.
    WrongVersion,
}

/// A copy of the binary `name` stamped with `version` (its version slot
/// rewritten, see `palette_host::stamp`).
pub fn stamped(name: &str, version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(bin(name)).unwrap();
    palette_host::stamp::stamp_bytes(&mut bytes, &version.parse().unwrap()).unwrap();
    bytes
}

/// A watchdog release archive (tar.gz) as `version`.
pub fn watchdog_release_archive(dir: &Path, version: &str, build: WatchdogBuild) -> PathBuf {
    let path = dir.join(format!("watchdog-{version}-{build:?}.tar.gz"));
    let f = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let script = |body: &str| format!("#!/bin/sh\n{body}\n").into_bytes();
    let watchdog = match build {
        WatchdogBuild::Good | WatchdogBuild::BrokenManager => stamped("palette-watchdog", version),
        WatchdogBuild::WrongVersion => std::fs::read(bin("palette-watchdog")).unwrap(),
        WatchdogBuild::ExitsAtOnce => {
            script("echo 'palette-watchdog: cannot start: simulated broken build' >&2\nexit 3")
        }
        WatchdogBuild::NeverChecksIn => {
            script("echo 'palette-watchdog: started, never checks in'\nexec sleep 600")
        }
        WatchdogBuild::IgnoresSigterm => script(
            "trap '' TERM\necho 'palette-watchdog: started, ignores SIGTERM'\nwhile :; do sleep 1; done",
        ),
    };
    let manager = match build {
        WatchdogBuild::BrokenManager => script("echo 'broken manager' >&2\nexit 1"),
        WatchdogBuild::WrongVersion => std::fs::read(bin("palette-manager")).unwrap(),
        _ => stamped("palette-manager", version),
    };
    add("palette-watchdog", &watchdog);
    add("palette-manager", &manager);
    add("VERSION", version.as_bytes());
    b.into_inner().unwrap().finish().unwrap();
    path
}

/// What the sample agent wrote when it started.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    pub endpoint: String,
}

/// One host: an install folder and its watchdog process.
pub struct Host {
    pub name: String,
    pub base: PathBuf,
    _tmp: tempfile::TempDir,
    watchdog: Option<Child>,
}

impl Host {
    /// An install folder with agent 1.0.0 in `versions/`, the manager, a
    /// `Config.yml` for `server_url` and a `watchdog.yml` with short
    /// intervals. `settings_extra` is appended to `watchdog.yml`.
    pub fn new(name: &str, server_url: &str, protocol: &str, settings_extra: &str) -> Host {
        Self::with_agent_settings(name, server_url, protocol, "", settings_extra)
    }

    /// As `new`, with `agent_extra` (indented lines) added to the `agent:`
    /// block of `watchdog.yml`.
    pub fn with_agent_settings(
        name: &str,
        server_url: &str,
        protocol: &str,
        agent_extra: &str,
        settings_extra: &str,
    ) -> Host {
        Self::build(
            tempfile::tempdir().unwrap(),
            name,
            server_url,
            protocol,
            agent_extra,
            settings_extra,
        )
    }

    /// As `new`, with the install folder inside `parent` (a small tmpfs in
    /// the disk tests).
    pub fn new_in(parent: &Path, name: &str, server_url: &str, settings_extra: &str) -> Host {
        Self::build(
            tempfile::tempdir_in(parent).unwrap(),
            name,
            server_url,
            "v2",
            "",
            settings_extra,
        )
    }

    fn build(
        tmp: tempfile::TempDir,
        name: &str,
        server_url: &str,
        protocol: &str,
        agent_extra: &str,
        settings_extra: &str,
    ) -> Host {
        let base = tmp.path().to_path_buf();
        let v1 = base.join("versions/1.0.0");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::copy(bin("palette-sample-agent"), v1.join("palette-sample-agent")).unwrap();
        std::fs::write(v1.join("VERSION"), "1.0.0").unwrap();
        std::fs::write(base.join("versions/current"), "1.0.0\n").unwrap();
        std::fs::copy(bin("palette-manager"), base.join("palette-manager")).unwrap();
        // The watchdog runs from the install folder, as installed: a
        // self-update replaces this copy.
        std::fs::copy(bin("palette-watchdog"), base.join("palette-watchdog")).unwrap();
        std::fs::create_dir_all(base.join("Config")).unwrap();
        std::fs::write(
            base.join("Config/Config.yml"),
            agent_config(server_url, AGENT_KEY, "AgentOnly:\n  keep: this\n"),
        )
        .unwrap();
        let settings = format!(
            "hostname: {name}
agent:
  command: ['{{current}}/palette-sample-agent', '--base', '{{base}}']
  health_secs: 1
  stop_timeout_secs: 5
{agent_extra}server:
  protocol: {protocol}
  checkin_wait_secs: 5
  timeout_secs: 10
intervals:
  keepalive_secs: 2
  commands_secs: 1
  updates_secs: 1
  restart_first_ms: 100
{settings_extra}"
        );
        std::fs::write(base.join("watchdog.yml"), settings).unwrap();
        Host {
            name: name.into(),
            base,
            _tmp: tmp,
            watchdog: None,
        }
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the watchdog with extra environment variables (which its
    /// manager runs inherit).
    pub fn start_with_env(&mut self, vars: &[(&str, &str)]) {
        self.start_with(vars, &[]);
    }

    /// Starts the watchdog with extra environment variables and extra
    /// arguments after `run`.
    pub fn start_with(&mut self, vars: &[(&str, &str)], args: &[&str]) {
        assert!(self.watchdog.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("watchdog.console.log"))
            .unwrap();
        let mut cmd = Command::new(self.base.join("palette-watchdog"));
        cmd.args(["run", "--base", &self.base.display().to_string()])
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_fresh_copy(&mut cmd);
        self.watchdog = Some(child);
    }

    /// A graceful stop (SIGTERM), as systemd does it — of the watchdog
    /// running now, which after a self-update is not the one this started.
    pub fn stop(&mut self) {
        self.end(Signal::SIGTERM);
    }

    /// A crash: SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.end(Signal::SIGKILL);
    }

    fn end(&mut self, sig: Signal) {
        if let Some(mut c) = self.watchdog.take() {
            if sig == Signal::SIGKILL {
                let _ = c.kill();
                let _ = c.wait();
            } else {
                sigterm_and_wait(&mut c, Duration::from_secs(20));
            }
        }
        // A watchdog the manager started (self-update): signalled by pid.
        while let Some(pid) = self.watchdog_pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The process id of the watchdog running on this folder now: the one
    /// this started, or the one holding the single-instance lock (started
    /// by the manager after a self-update).
    pub fn watchdog_pid(&self) -> Option<u32> {
        if let Some(c) = &self.watchdog {
            if alive(c.id()) {
                return Some(c.id());
            }
        }
        let base = self.base.display().to_string();
        let lock = self.base.join("state/watchdog.lock");
        palette_host::lock::holder(&lock)?;
        find_processes(&["palette-watchdog", "run", &base])
            .into_iter()
            .find(|p| alive(*p))
    }

    /// What `<base>/palette-watchdog --version` says (the installed binary
    /// runs and answers within 10 s), `None` when it does not.
    pub fn installed_watchdog_version(&self) -> Option<String> {
        version_of(&self.base.join("palette-watchdog"), "palette-watchdog")
    }

    /// The same for `<base>/palette-manager`.
    pub fn installed_manager_version(&self) -> Option<String> {
        version_of(&self.base.join("palette-manager"), "palette-manager")
    }

    pub fn config_yml(&self) -> String {
        std::fs::read_to_string(self.base.join("Config/Config.yml")).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("Logs/watchdog.log")).unwrap_or_default()
    }

    pub fn agent(&self) -> Option<AgentStatus> {
        let text = std::fs::read_to_string(self.base.join("state/sample-agent.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The running agent, if one runs.
    pub fn running_agent(&self) -> Option<AgentStatus> {
        self.agent().filter(|a| alive(a.pid))
    }

    pub async fn wait_agent_running(&self, limit: Duration) -> anyhow::Result<AgentStatus> {
        wait_for("the agent runs", limit, || async {
            self.running_agent().is_some()
        })
        .await
        .context(self.diagnostics())?;
        Ok(self.running_agent().unwrap())
    }

    pub async fn wait_log(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        wait_for(&format!("watchdog log says {needle:?}"), limit, || async {
            self.log().contains(needle)
        })
        .await
        .context(self.diagnostics())
    }

    pub fn diagnostics(&self) -> String {
        let tail = |p: &str| {
            let t = std::fs::read_to_string(self.base.join(p)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        format!(
            "--- watchdog log ---\n{}\n--- watchdog started by the manager ---\n{}\n--- agent log ---\n{}\n--- manager log ---\n{}",
            tail("watchdog.console.log"),
            tail("Logs/watchdog.console.log"),
            tail("Logs/agent.log"),
            tail("Logs/manager.log")
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.watchdog.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let base = self.base.display().to_string();
        for pid in find_processes(&["palette-watchdog", "run", &base]) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // The agent leads its own process group: end it too.
        if let Some(a) = self.agent() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(a.pid as i32), Signal::SIGKILL);
        }
    }
}

/// A TCP proxy on loopback in front of a server: it can slow the server's
/// answers to a given rate (a slow link, to hold a download open) and it
/// records the start of what clients send (the wire, as the server sees it).
pub struct Proxy {
    pub url: String,
    wire: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: tokio_util::sync::CancellationToken,
}

/// The proxy keeps at most this much of what clients sent.
const WIRE_KEEP: usize = 4 << 20;

impl Proxy {
    pub async fn start(target_port: u16, bytes_per_sec: Option<u64>) -> Proxy {
        Self::start_with(target_port, bytes_per_sec, None).await
    }

    /// As `start`; with `cut_after`, the first answer longer than that many
    /// bytes is cut off there (the connection closed mid-body), once.
    pub async fn start_with(
        target_port: u16,
        bytes_per_sec: Option<u64>,
        cut_after: Option<u64>,
    ) -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cut_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let wire = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (w, s) = (wire.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    c = listener.accept() => match c { Ok((c, _)) => c, Err(_) => continue },
                    _ = s.cancelled() => return,
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (w, s1, s2) = (w.clone(), s.clone(), s.clone());
                let cut_done = cut_done.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = tokio::select! {
                            r = cr.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                            _ = s1.cancelled() => break,
                        };
                        {
                            let mut w = w.lock().unwrap();
                            let room = WIRE_KEEP.saturating_sub(w.len());
                            w.extend_from_slice(&buf[..n.min(room)]);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut total = 0u64;
                    loop {
                        let n = tokio::select! {
                            r = sr.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                            _ = s2.cancelled() => break,
                        };
                        total += n as u64;
                        if let Some(cut) = cut_after {
                            if total > cut
                                && !cut_done.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                let keep = n - (total - cut) as usize;
                                let _ = cw.write_all(&buf[..keep]).await;
                                break;
                            }
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if let Some(rate) = bytes_per_sec {
                            let pause = Duration::from_secs_f64(n as f64 / rate as f64);
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = s2.cancelled() => break,
                            }
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            wire,
            stop,
        }
    }

    /// What clients sent so far (the start of it), as text.
    pub fn wire(&self) -> String {
        String::from_utf8_lossy(&self.wire.lock().unwrap()).into_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A tmpfs mounted for a test (a small disk to fill), unmounted when
/// dropped. Needs root and permission to mount: callers skip with the
/// returned reason where that is refused.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {} (needs root and permission to mount)",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Tmpfs {
    /// Grows (or shrinks) the mounted tmpfs to `size`.
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The bytes free on it now.
    pub fn free(&self) -> u64 {
        palette_host::disk::available_space(&self.path).expect("the free space is known")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// One request a `FakeHttp` received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a `FakeHttp` answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(body: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into().into_bytes(),
        }
    }

    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

type Handler = std::sync::Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;

/// A stand-in HTTP/1.1 server on loopback (a hostile or broken server, or
/// a stranger a release URL points at): it records every request and
/// answers what `handler` says, one request per connection.
pub struct FakeHttp {
    pub url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl FakeHttp {
    pub async fn start(handler: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> FakeHttp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let handler: Handler = std::sync::Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (reqs, s) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut sock = tokio::select! {
                    c = listener.accept() => match c { Ok((c, _)) => c, Err(_) => continue },
                    _ = s.cancelled() => return,
                };
                let (reqs, handler) = (reqs.clone(), handler.clone());
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 16384];
                    let (head_end, len) = loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        data.extend_from_slice(&buf[..n]);
                        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&data[..i]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                    };
                    while data.len() < head_end + len {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&data[..head_end - 4]).into_owned();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let rec = Recorded {
                        method: first.next().unwrap_or("").into(),
                        path: first.next().unwrap_or("").into(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
                            .collect(),
                        body: data[head_end..].to_vec(),
                        at: Instant::now(),
                    };
                    let answer = handler(&rec);
                    reqs.lock().unwrap().push(rec);
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                        answer.status,
                        answer.body.len()
                    );
                    for (n, v) in &answer.headers {
                        out.push_str(&format!("{n}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let _ = sock.write_all(out.as_bytes()).await;
                    let _ = sock.write_all(&answer.body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        FakeHttp {
            url,
            requests,
            stop,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A v2 release offer (JSON) for a check-in answer.
pub fn release_offer(
    id: i64,
    product: &str,
    version: &str,
    url: &str,
    sha256: &str,
    size: u64,
) -> String {
    let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    format!(
        r#"{{"id":{id},"product":"{product}","version":"{version}","platform":"{platform}","kind":"archive","sha256":"{sha256}","md5":"","size":{size},"signature":null,"url":"{url}","created_at":"2026-01-01T00:00:00Z"}}"#
    )
}
