//! The dashboard in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver, started here), against the real server and
//! real watchdogs. Screenshots of the main pages go to
//! `target/screenshots/`. Without chromedriver the test says so and passes,
//! unless PALETTE_REQUIRE_CHROMIUM=1 (CI) makes that a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use palette_e2e::*;

use super::T;

struct Driver {
    child: Child,
    client: Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

async fn browser() -> Option<Driver> {
    let Some(bin) = chromedriver() else {
        assert!(
            std::env::var("PALETTE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "chromedriver is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: no chromedriver (apt-get install chromium chromium-driver)");
        return None;
    };
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    wait_for("chromedriver listens", T, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
    .unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a WebDriver session with headless Chromium");
    Some(Driver { child, client })
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_text(c: &Client, what: &str, css: &str, want: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let t = text_of(c, css).await;
        if want(&t) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {css} says {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_dashboard_in_headless_chromium() {
    let Some(driver) = browser().await else {
        return;
    };
    let c = driver.client.clone();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_args(
        &tmp.path().join("server"),
        free_port(),
        &["--default-rollout", "manual"],
        &[],
    )
    .await;
    let api = server.api();
    let mut hosts = Vec::new();
    for (i, site) in ["eu", "us", "eu"].iter().enumerate() {
        let mut h = Host::new(
            &format!("web-{}", i + 1),
            &server.url,
            "v2",
            &format!("labels:\n  site: {site}\n"),
        );
        h.start();
        hosts.push(h);
    }
    for h in &hosts {
        h.wait_agent_running(T).await.unwrap();
        wait_for("the host reports", T, || async {
            api.host(&h.name).await.is_some_and(|i| i.report.is_some())
        })
        .await
        .unwrap();
    }
    let a = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a, "2.0.0", "archive").await;

    // Without a session: the login page.
    c.goto(&format!("{}/ui/hosts", server.url)).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("not-a-token")
        .await
        .unwrap();
    c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "a wrong token is refused", "#login-error", |t| {
        t.contains("not a live operator token")
    })
    .await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "the fleet page counts the hosts", "#count-hosts", |t| {
        t == "3"
    })
    .await;
    wait_text(&c, "versions", "#versions", |t| t.contains("1.0.0")).await;
    shot(&c, "fleet").await;

    // Hosts, filtered.
    c.goto(&format!("{}/ui/hosts", server.url)).await.unwrap();
    wait_text(&c, "every host", "#hosts tbody", |t| {
        t.contains("web-1") && t.contains("web-2") && t.contains("web-3") && t.contains("1.0.0")
    })
    .await;
    shot(&c, "hosts").await;
    c.find(Locator::Css("#q"))
        .await
        .unwrap()
        .send_keys("web-2")
        .await
        .unwrap();
    c.find(Locator::Css("#filter"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "the filter", "#hosts tbody", |t| {
        t.contains("web-2") && !t.contains("web-1") && !t.contains("web-3")
    })
    .await;
    // Open the host.
    c.find(Locator::LinkText("web-2"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "the host page", "#host-state", |t| t == "online").await;
    shot(&c, "host").await;

    // A rollout from the page: one canary, then the rest after an hour.
    c.goto(&format!("{}/ui/rollouts", server.url))
        .await
        .unwrap();
    let waves = c.find(Locator::Css("input[name=waves]")).await.unwrap();
    waves.clear().await.unwrap();
    waves.send_keys("1,100%").await.unwrap();
    let soak = c.find(Locator::Css("input[name=soak_secs]")).await.unwrap();
    soak.clear().await.unwrap();
    soak.send_keys("3600").await.unwrap();
    c.find(Locator::Css("#start-rollout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "the rollout page", "#rollout-phase", |t| t == "running").await;
    // The canary finishes (the page refreshes itself).
    wait_text(
        &c,
        "the canary succeeded",
        "#waves tbody tr:first-child td:nth-child(4)",
        |t| t == "1",
    )
    .await;
    shot(&c, "rollout").await;
    c.find(Locator::Css("#pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "paused", "#rollout-phase", |t| t == "paused").await;

    // Stop one host from the commands page and see it stopped.
    c.goto(&format!("{}/ui/commands", server.url))
        .await
        .unwrap();
    c.find(Locator::Css("#command-hosts"))
        .await
        .unwrap()
        .send_keys("web-3")
        .await
        .unwrap();
    c.find(Locator::Css("#send-stop"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "the command and its answer", "#commands tbody", |t| {
        t.contains("stop") && t.contains("web-3: Succeeded")
    })
    .await;
    shot(&c, "commands").await;
    c.goto(&format!("{}/ui/hosts/web-3", server.url))
        .await
        .unwrap();
    wait_text(&c, "web-3 shows stopped", "#host-agent", |t| {
        t.contains("stopped")
    })
    .await;

    // Narrow screen.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{}/ui/", server.url)).await.unwrap();
    wait_text(&c, "the fleet page", "#count-hosts", |t| t == "3").await;
    shot(&c, "fleet-narrow").await;
    c.set_window_size(1280, 900).await.unwrap();

    // Log out: the pages need a login again.
    c.find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the login page", T, || async {
        c.current_url().await.unwrap().path().ends_with("/ui/login")
    })
    .await
    .unwrap();
    c.goto(&format!("{}/ui/hosts", server.url)).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    c.clone().close().await.unwrap();

    // No write without a session, or with another CSRF token.
    let before = api.commands().await.len();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/ui/commands", server.url))
        .form(&[("kind", "stop"), ("hosts", "web-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{}/ui/login", server.url))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("HttpOnly"));
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("SameSite=Strict"));
    let r = http
        .post(format!("{}/ui/commands", server.url))
        .header("cookie", &cookie)
        .form(&[("kind", "stop"), ("hosts", "web-1"), ("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(api.commands().await.len(), before, "nothing was issued");
    drop(driver);
}
