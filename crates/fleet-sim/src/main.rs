//! `palette-fleet-sim`: N simulated hosts in one process, each a real v2
//! client of palette-server (check-in long polls, acknowledgements in the
//! next check-in, release downloads whose sha256 is verified, update
//! outcomes reported), spread over one or several server URLs. It measures
//! what an operator of a large fleet asks: check-ins per second, long polls
//! held, how fast a command reaches every host (issue → all acknowledged),
//! how fast a release and a rollout wave do, the dashboard's render time
//! with every host known, and the servers' RSS and CPU. Load stays on
//! loopback and the run ends by itself.
//!
//! Owns: simulating hosts and printing numbers. Must not: be used as a
//! test oracle (numbers are for benchmarks, never pass/fail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use palette_protocol::v2::{
    AgentState, CheckinRequest, CheckinResponse, CommandAck, DesiredState, HostReport, Outcome,
    UpdateReport,
};
use palette_protocol::Version;
use sha2::Digest;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Simulate many hosts against palette-server and print what it did."
)]
struct Cli {
    /// Server base URLs (comma-separated): hosts are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    servers: String,
    /// How many simulated hosts.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// The enrollment key (license key) the hosts use.
    #[arg(long, env = "PALETTE_SIM_AGENT_TOKEN")]
    agent_token: String,
    /// An operator token (to issue commands, publish, start rollouts).
    #[arg(long, env = "PALETTE_SIM_ADMIN_TOKEN")]
    admin_token: String,
    /// The long-poll wait each host asks for, in seconds.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Host names are PREFIX-N.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Check-ins started per second while the fleet comes up.
    #[arg(long, default_value_t = 2000)]
    ramp_per_sec: u64,
    /// What to measure, in order: idle (check-in load while nothing
    /// happens), command (a restart to all), release (a publish to all),
    /// rollout (a held release in one wave, soak 0), dashboard (render
    /// times of /ui/ and /ui/hosts).
    #[arg(long, default_value = "idle,command,release,rollout,dashboard")]
    scenarios: String,
    /// Seconds of idle measurement.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// The servers' process ids, for RSS and CPU (comma-separated; Linux).
    #[arg(long, default_value = "")]
    server_pids: String,
    /// Give up on one scenario after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What the hosts share with the coordinator.
#[derive(Default)]
struct Stats {
    checkins: AtomicU64,
    in_flight: AtomicI64,
    errors: AtomicU64,
    /// Hosts that checked in at least once.
    up: AtomicU64,
    /// Command id → when each host's acknowledgement was recorded.
    acks: Mutex<HashMap<i64, Vec<Instant>>>,
    /// Release id → when each host reported it installed.
    installs: Mutex<HashMap<i64, Vec<Instant>>>,
    /// Verified downloads.
    downloads: AtomicU64,
}

struct Sim {
    http: reqwest::Client,
    cli: Cli,
    stats: Stats,
    servers: Vec<String>,
    platform: String,
}

fn report(name: &str, platform: &str, version: Version, last: Option<UpdateReport>) -> HostReport {
    HostReport {
        hostname: name.into(),
        product: "agent".into(),
        platform: platform.into(),
        watchdog_version: "sim".into(),
        agent_version: Some(version),
        agent_state: AgentState::Running,
        desired_state: DesiredState::Running,
        config_revision: None,
        last_update: last,
        last_watchdog_update: None,
        update_progress: None,
        local_trouble: None,
        labels: [("sim".to_string(), "yes".to_string())]
            .into_iter()
            .collect(),
    }
}

/// One simulated host: check in forever (until the process ends).
async fn host(sim: Arc<Sim>, i: usize) {
    let name = format!("{}-{i}", sim.cli.prefix);
    let base = &sim.servers[i % sim.servers.len()];
    let mut version: Version = "1.0.0".parse().expect("a version");
    let mut last_update: Option<UpdateReport> = None;
    let mut seen_release: Option<i64> = None;
    let mut acks: Vec<CommandAck> = Vec::new();
    let mut performed: Vec<i64> = Vec::new();
    let mut store_id: Option<String> = None;
    let mut first = true;
    let mut report_pending: Option<i64> = None;
    loop {
        let sending_acks: Vec<i64> = acks.iter().map(|a| a.id).collect();
        let req = CheckinRequest {
            host: report(&name, &sim.platform, version, last_update.clone()),
            store_id: store_id.clone(),
            results: std::mem::take(&mut acks),
            seen_release,
            seen_config: None,
            seen_watchdog_release: None,
        };
        // Answer at once while something is to be told.
        let wait = if !first && sending_acks.is_empty() && report_pending.is_none() {
            sim.cli.wait
        } else {
            0
        };
        sim.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let res = sim
            .http
            .post(format!("{base}/api/v2/checkin?wait={wait}"))
            .header("authorization", format!("Token {}", sim.cli.agent_token))
            .json(&req)
            .send()
            .await;
        sim.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let resp: CheckinResponse = match res {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(v) => v,
                Err(_) => {
                    sim.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ => {
                sim.stats.errors.fetch_add(1, Ordering::Relaxed);
                acks = req.results;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let now = Instant::now();
        sim.stats.checkins.fetch_add(1, Ordering::Relaxed);
        if first {
            first = false;
            sim.stats.up.fetch_add(1, Ordering::Relaxed);
        }
        store_id = resp.store_id.clone();
        if !sending_acks.is_empty() {
            let mut m = sim.stats.acks.lock().unwrap();
            for id in sending_acks {
                m.entry(id).or_default().push(now);
            }
        }
        if let Some(id) = report_pending.take() {
            sim.stats
                .installs
                .lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(now);
        }
        for c in &resp.commands {
            if !performed.contains(&c.id) {
                performed.push(c.id);
                acks.push(CommandAck {
                    id: c.id,
                    hostname: name.clone(),
                    outcome: Outcome::Succeeded,
                    message: "simulated".into(),
                    at: String::new(),
                });
            }
        }
        if performed.len() > 1000 {
            performed.drain(..500);
        }
        if let Some(r) = &resp.release {
            if seen_release != Some(r.id) {
                seen_release = Some(r.id);
                if r.version != version {
                    match download(&sim, base, &r.url, &r.sha256).await {
                        Ok(()) => {
                            version = r.version;
                            last_update = Some(UpdateReport {
                                release_id: r.id,
                                version: r.version,
                                outcome: Outcome::Succeeded,
                                message: "simulated install".into(),
                            });
                            report_pending = Some(r.id);
                        }
                        Err(_) => {
                            sim.stats.errors.fetch_add(1, Ordering::Relaxed);
                            seen_release = None;
                        }
                    }
                }
            }
        }
    }
}

/// Downloads an artifact and checks its sha256.
async fn download(sim: &Sim, base: &str, url: &str, sha256: &str) -> anyhow::Result<()> {
    let mut res = sim
        .http
        .get(format!("{base}{url}"))
        .header("authorization", format!("Token {}", sim.cli.agent_token))
        .send()
        .await?
        .error_for_status()?;
    let mut h = sha2::Sha256::new();
    while let Some(chunk) = res.chunk().await? {
        h.update(&chunk);
    }
    if hex::encode(h.finalize()) != sha256 {
        bail!("sha256 mismatch");
    }
    sim.stats.downloads.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn percentiles(mut d: Vec<Duration>) -> String {
    if d.is_empty() {
        return "none".into();
    }
    d.sort();
    let at = |p: f64| d[((d.len() as f64 * p).ceil() as usize).clamp(1, d.len()) - 1];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} hosts)",
        at(0.50).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        d[d.len() - 1].as_secs_f64() * 1000.0,
        d.len()
    )
}

/// RSS (MiB) and CPU seconds of a process (Linux `/proc`).
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((rss_kb / 1024.0, ticks / clock_ticks()))
}

#[cfg(unix)]
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

#[cfg(not(unix))]
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(unix)]
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(not(unix))]
fn raise_nofile() {}

impl Sim {
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.servers[0]))
            .bearer_auth(&self.cli.admin_token)
    }

    fn pids(&self) -> Vec<u32> {
        self.cli
            .server_pids
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }

    fn usage(&self) -> Vec<(u32, f64, f64)> {
        self.pids()
            .into_iter()
            .filter_map(|p| proc_usage(p).map(|(rss, cpu)| (p, rss, cpu)))
            .collect()
    }

    /// Waits until `count()` reaches `n` or the timeout; the time taken.
    async fn until(&self, n: usize, count: impl Fn() -> usize) -> Option<Duration> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(self.cli.timeout);
        loop {
            if count() >= n {
                return Some(t.elapsed());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn publish(&self, version: &str, hold: bool) -> anyhow::Result<serde_json::Value> {
        let body = format!("simulated artifact {version}\n").repeat(64);
        let res = self
            .admin(
                reqwest::Method::POST,
                &format!(
                    "/api/v2/releases?version={version}&platform={}&kind=archive&force=true&hold={hold}",
                    self.platform
                ),
            )
            .body(body)
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("publish {version}: {} {}", res.status(), res.text().await?);
        }
        Ok(res.json().await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    let servers: Vec<String> = cli
        .servers
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        bail!("--servers names no server");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.hosts + 64)
        .pool_idle_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(cli.wait + 60))
        .build()?;
    // A platform of its own, so real hosts of the server are never offered
    // the simulator's releases.
    let platform = format!("sim-{}", std::process::id());
    let sim = Arc::new(Sim {
        http,
        stats: Stats::default(),
        servers,
        platform,
        cli,
    });
    let n = sim.cli.hosts;
    println!(
        "palette-fleet-sim: {n} hosts over {} server(s), long polls of {} s",
        sim.servers.len(),
        sim.cli.wait
    );
    let before = sim.usage();
    let t = Instant::now();
    let ramp = sim.cli.ramp_per_sec.max(1);
    for i in 0..n {
        tokio::spawn(host(sim.clone(), i));
        if (i as u64 + 1).is_multiple_of((ramp / 10).max(1)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let Some(up) = sim
        .until(n, || sim.stats.up.load(Ordering::Relaxed) as usize)
        .await
    else {
        bail!(
            "only {} of {n} hosts checked in within {} s ({} errors)",
            sim.stats.up.load(Ordering::Relaxed),
            sim.cli.timeout,
            sim.stats.errors.load(Ordering::Relaxed)
        );
    };
    println!(
        "fleet up: {n} hosts checked in within {:.1} s of the start ({:.1} s after the last started)",
        t.elapsed().as_secs_f64(),
        up.as_secs_f64()
    );
    // Let the first round of answers settle into long polls.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (pid, rss, _) in sim.usage() {
        println!("server {pid}: RSS {rss:.0} MiB with {n} hosts long-polling");
    }
    let _ = before;
    let scenarios: Vec<String> = sim
        .cli
        .scenarios
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    for s in &scenarios {
        match s.as_str() {
            "idle" => idle(&sim).await,
            "command" => command(&sim).await?,
            "release" => release(&sim).await?,
            "rollout" => rollout(&sim).await?,
            "dashboard" => dashboard(&sim).await?,
            "" => {}
            other => bail!("unknown scenario {other:?}"),
        }
    }
    for (pid, rss, _) in sim.usage() {
        println!("server {pid}: RSS {rss:.0} MiB at the end");
    }
    println!(
        "errors: {} (failed check-ins or downloads, retried)",
        sim.stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn idle(sim: &Sim) {
    let secs = sim.cli.idle_secs;
    let c0 = sim.stats.checkins.load(Ordering::Relaxed);
    let u0 = sim.usage();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let el = t.elapsed().as_secs_f64();
    let c1 = sim.stats.checkins.load(Ordering::Relaxed);
    println!(
        "idle: {:.0} check-ins/s, {} long polls held",
        (c1 - c0) as f64 / el,
        sim.stats.in_flight.load(Ordering::Relaxed)
    );
    for ((pid, rss, cpu1), (_, _, cpu0)) in sim.usage().into_iter().zip(u0) {
        println!(
            "idle: server {pid} uses {:.1}% of a core, RSS {rss:.0} MiB",
            (cpu1 - cpu0) / el * 100.0
        );
    }
}

async fn command(sim: &Sim) -> anyhow::Result<()> {
    let n = sim.cli.hosts;
    let t = Instant::now();
    let res = sim
        .admin(reqwest::Method::POST, "/api/v2/commands")
        .json(&serde_json::json!({"kind": "restart", "target": "all", "ttl_secs": 600}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("command: {} {}", res.status(), res.text().await?);
    }
    let v: serde_json::Value = res.json().await?;
    let id = v["id"].as_i64().context("a command id")?;
    let all = sim
        .until(n, || {
            sim.stats
                .acks
                .lock()
                .unwrap()
                .get(&id)
                .map(Vec::len)
                .unwrap_or(0)
        })
        .await;
    let times: Vec<Duration> = sim
        .stats
        .acks
        .lock()
        .unwrap()
        .get(&id)
        .map(|v| v.iter().map(|i| i.duration_since(t)).collect())
        .unwrap_or_default();
    match all {
        Some(_) => println!(
            "command to all: every one of {n} hosts acknowledged within {:.2} s of the request — {}",
            times.iter().max().copied().unwrap_or_default().as_secs_f64(),
            percentiles(times)
        ),
        None => println!(
            "command to all: only {} of {n} acknowledged within {} s — {}",
            times.len(),
            sim.cli.timeout,
            percentiles(times)
        ),
    }
    Ok(())
}

async fn release(sim: &Sim) -> anyhow::Result<()> {
    let n = sim.cli.hosts;
    let t = Instant::now();
    let r = sim.publish("2.0.0", false).await?;
    let id = r["id"].as_i64().context("a release id")?;
    report_installs(sim, "release to all", id, t, n).await;
    Ok(())
}

async fn report_installs(sim: &Sim, what: &str, id: i64, t: Instant, n: usize) {
    let all = sim
        .until(n, || {
            sim.stats
                .installs
                .lock()
                .unwrap()
                .get(&id)
                .map(Vec::len)
                .unwrap_or(0)
        })
        .await;
    let times: Vec<Duration> = sim
        .stats
        .installs
        .lock()
        .unwrap()
        .get(&id)
        .map(|v| v.iter().map(|i| i.duration_since(t)).collect())
        .unwrap_or_default();
    match all {
        Some(_) => println!(
            "{what}: all {n} hosts downloaded (sha256 verified) and reported it within {:.2} s of the request — {}",
            times.iter().max().copied().unwrap_or_default().as_secs_f64(),
            percentiles(times)
        ),
        None => println!(
            "{what}: only {} of {n} reported within {} s",
            times.len(),
            sim.cli.timeout
        ),
    }
}

async fn rollout(sim: &Sim) -> anyhow::Result<()> {
    let n = sim.cli.hosts;
    let r = sim.publish("3.0.0", true).await?;
    let id = r["id"].as_i64().context("a release id")?;
    let t = Instant::now();
    let res = sim
        .admin(reqwest::Method::POST, "/api/v2/rollouts")
        .json(&serde_json::json!({"release_id": id, "selector": "sim=yes", "waves": ["100%"], "soak_secs": 0}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("rollout: {} {}", res.status(), res.text().await?);
    }
    report_installs(sim, "rollout wave (soak 0)", id, t, n).await;
    Ok(())
}

async fn dashboard(sim: &Sim) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = &sim.servers[0];
    let res = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", sim.cli.admin_token.as_str())])
        .send()
        .await?;
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the dashboard login gave no session")?
        .to_string();
    let hosts: Vec<serde_json::Value> = sim
        .admin(reqwest::Method::GET, "/api/v2/hosts")
        .send()
        .await?
        .json()
        .await?;
    for page in ["/ui/", "/ui/hosts", "/ui/hosts?q=sim-1"] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..10 {
            let t = Instant::now();
            let body = http
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .send()
                .await?
                .bytes()
                .await?;
            times.push(t.elapsed());
            size = body.len();
        }
        times.sort();
        println!(
            "dashboard {page} with {} hosts known: median {:.1} ms, max {:.1} ms ({} KiB)",
            hosts.len(),
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
            size / 1024
        );
    }
    Ok(())
}
