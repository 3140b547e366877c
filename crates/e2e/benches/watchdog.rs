//! Watchdog benchmark: prints numbers, asserts nothing.
//!   - idle RSS and CPU over a minute (BENCH_IDLE_SECS, default 60)
//!   - agent crash → running-again latency (p50 / p99 over 30 kills)
//!   - peak RSS while downloading a 1 GiB release (BENCH_DOWNLOAD_MIB, default 1024)
//!   - command issue → executed (acknowledged) latency through the long poll
//!   - agent downtime during an update (old agent's exit → new one running)
//!   - the same for a release of many files (BENCH_MANY_FILES, default 8000),
//!     which the manager unpacks into staging before the agent is stopped;
//!     `BENCH_ONLY=many-files` runs only this
//!   - watchdog self-update wall time (published → new watchdog checked in)
//!
//! Run with `bench/watchdog.sh` (builds the release binaries first).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

#[cfg(unix)]
#[tokio::main]
async fn main() {
    bench::run().await;
}

#[cfg(not(unix))]
fn main() {}

#[cfg(unix)]
mod bench {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use palette_e2e::*;
    use palette_protocol::v2::CommandKind;

    fn env(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn proc_field(pid: u32, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(pid: u32) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = s.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }

    fn pct(v: &mut [Duration], p: f64) -> Duration {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    pub async fn run() {
        let tmp = tempfile::tempdir().unwrap();
        if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "many-files") {
            many_files(&tmp).await;
            return;
        }
        let server = Server::start(&tmp.path().join("server")).await;
        let api = server.api();
        let mut host = Host::new(
            "bench-host",
            &server.url,
            "v2",
            "  restart_stable_secs: 1\n",
        );
        host.start();
        host.wait_agent_running(Duration::from_secs(30))
            .await
            .unwrap();
        let pid = host.watchdog_pid().unwrap();
        // Let the first check-in and config report settle.
        wait_for("first report", Duration::from_secs(30), || async {
            !api.configs("bench-host").await.is_empty()
        })
        .await
        .unwrap();

        let idle = env("BENCH_IDLE_SECS", 60);
        let t0 = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let ticks = cpu_ticks(pid) - t0;
        let hz = 100.0; // USER_HZ on Linux
        println!(
            "watchdog idle: RSS {:.1} MiB, CPU {:.3}% of a core over {idle} s",
            proc_field(pid, "VmRSS:") as f64 / 1024.0,
            ticks as f64 / hz / idle as f64 * 100.0
        );

        let mut lat = Vec::new();
        for _ in 0..30 {
            let a = host.running_agent().unwrap();
            let t = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            loop {
                if host.running_agent().is_some_and(|n| n.pid != a.pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lat.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(1200)).await; // past restart_stable_secs
        }
        println!(
            "agent crash → running again: p50 {:?}, p99 {:?} (30 kills)",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );

        let mut lat = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let id = api.command(CommandKind::Start, "bench-host").await;
            loop {
                if !api.command_status(id).await.results.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lat.push(t.elapsed());
        }
        println!(
            "command issue → executed and acknowledged: p50 {:?}, p99 {:?} (50 commands)",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );

        // Agent downtime during an update: from the old agent's exit to the
        // new one running (health window 1 s in these settings, not part of
        // the downtime).
        let mut down = Vec::new();
        let mut total = Vec::new();
        for i in 1..=5 {
            let version = format!("2.0.{i}");
            let archive = release_archive(tmp.path(), &version, false);
            let old = host.running_agent().unwrap();
            let t = Instant::now();
            api.publish(&archive, &version, "archive").await;
            let mut exited_at = None;
            loop {
                if exited_at.is_none() && !alive(old.pid) {
                    exited_at = Some(Instant::now());
                }
                if let Some(a) = host.running_agent() {
                    if a.version == version {
                        let now = Instant::now();
                        down.push(now - exited_at.unwrap_or(now));
                        total.push(t.elapsed());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            wait_for("committed", Duration::from_secs(60), || async {
                host.log().matches("update succeeded").count() >= i
            })
            .await
            .unwrap();
        }
        println!(
            "agent update: downtime (old agent's exit → new one running) p50 {:?}, max {:?}; publish → new agent running p50 {:?} (5 updates)",
            pct(&mut down, 0.5),
            pct(&mut down, 1.0),
            pct(&mut total, 0.5)
        );

        let mib = env("BENCH_DOWNLOAD_MIB", 1024);
        let big = tmp.path().join("big.bin");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
            let mut x: u64 = 0x9E3779B97F4A7C15;
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..mib {
                for c in buf.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes());
                }
                f.write_all(&buf).unwrap();
            }
        }
        let before = proc_field(pid, "VmHWM:");
        let rss_before = proc_field(pid, "VmRSS:");
        let file = tokio::fs::File::open(&big).await.unwrap();
        let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
        let res = api
            .http
            .post(format!(
                "{}/api/v2/releases?version=9.0.0&platform={platform}&kind=archive",
                api.url
            ))
            .bearer_auth(ADMIN)
            .body(reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::new(file),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let ended = |log: String| {
            log.matches("update failed").count() + log.matches("update succeeded").count()
        };
        let before_updates = ended(host.log());
        let t = Instant::now();
        wait_for(
            "the 1 GiB update attempt ends",
            Duration::from_secs(600),
            || async { ended(host.log()) > before_updates },
        )
        .await
        .unwrap();
        println!(
            "{mib} MiB release: downloaded and verified in {:?}; watchdog peak RSS {:.1} MiB (idle RSS {:.1} MiB, peak before {:.1} MiB)",
            t.elapsed(),
            proc_field(pid, "VmHWM:") as f64 / 1024.0,
            rss_before as f64 / 1024.0,
            before as f64 / 1024.0
        );
        host.stop();
        drop(host);
        many_files(&tmp).await;
        self_update(&tmp).await;
    }

    /// Agent downtime (old agent's exit → new one running) while a release
    /// of many files is installed, three rounds; and how long the update
    /// took from publish to the new agent running.
    async fn many_files(tmp: &tempfile::TempDir) {
        let files = env("BENCH_MANY_FILES", 8000) as usize;
        let server = Server::start(&tmp.path().join("server-many")).await;
        let api = server.api();
        let mut host = Host::new("bench-many", &server.url, "v2", "");
        host.start();
        host.wait_agent_running(Duration::from_secs(30))
            .await
            .unwrap();
        let mut down = Vec::new();
        let mut total = Vec::new();
        for i in 1..=3 {
            let version = format!("3.0.{i}");
            let archive = release_archive_many(tmp.path(), &version, files);
            let old = host.running_agent().unwrap();
            let t = Instant::now();
            api.publish(&archive, &version, "archive").await;
            let mut exited_at = None;
            loop {
                if exited_at.is_none() && !alive(old.pid) {
                    exited_at = Some(Instant::now());
                }
                if let Some(a) = host.running_agent() {
                    if a.version == version {
                        let now = Instant::now();
                        down.push(now - exited_at.unwrap_or(now));
                        total.push(t.elapsed());
                        break;
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(600),
                    "{}",
                    host.diagnostics()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            wait_for("committed", Duration::from_secs(120), || async {
                host.log().matches("update succeeded").count() >= i
            })
            .await
            .unwrap();
        }
        println!(
            "agent update of a {files}-file release: downtime p50 {:?}, max {:?}; publish → new agent running p50 {:?} (3 updates)",
            pct(&mut down, 0.5),
            pct(&mut down, 1.0),
            pct(&mut total, 0.5)
        );
        host.stop();
    }

    /// Watchdog self-update wall time: release published → the new
    /// watchdog checked in (the server shows its version), three rounds;
    /// the agent's pid is checked unchanged.
    async fn self_update(tmp: &tempfile::TempDir) {
        let server = Server::start(&tmp.path().join("server-self")).await;
        let api = server.api();
        let mut host = Host::new(
            "bench-self",
            &server.url,
            "v2",
            "self_update:\n  prove_secs: 120\n",
        );
        host.start();
        let agent = host
            .wait_agent_running(Duration::from_secs(30))
            .await
            .unwrap()
            .pid;
        wait_for("the host checks in", Duration::from_secs(30), || async {
            api.host("bench-self").await.is_some()
        })
        .await
        .unwrap();
        let mut took = Vec::new();
        for v in ["9.0.0", "9.1.0", "9.2.0"] {
            let archive = watchdog_release_archive(tmp.path(), v, WatchdogBuild::Good);
            let t = Instant::now();
            api.publish_product(&archive, "watchdog", v, "archive")
                .await;
            wait_for(
                "the new watchdog checked in",
                Duration::from_secs(300),
                || async {
                    api.host("bench-self")
                        .await
                        .and_then(|h| h.report)
                        .is_some_and(|r| r.watchdog_version == v)
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
            took.push(t.elapsed());
        }
        let same_agent = host.running_agent().is_some_and(|a| a.pid == agent);
        took.sort();
        println!(
            "watchdog self-update, release published → new watchdog checked in: p50 {:?}, max {:?} ({} updates, archive {:.1} MiB; agent never restarted: {same_agent})",
            pct(&mut took.clone(), 0.5),
            took.last().unwrap(),
            took.len(),
            std::fs::metadata(tmp.path().join("watchdog-9.2.0-Good.tar.gz")).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0
        );
        host.stop();
    }
}
