//! The hosts list (filtered) and one host's page.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize, Default)]
pub(super) struct HostFilter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    selector: String,
}

pub(super) async fn hosts_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Query(f): Query<HostFilter>,
) -> Response {
    let sel = Selector::parse(&f.selector);
    let hosts: Vec<HostInfo> = state
        .hosts(None)
        .into_iter()
        .filter(|h| f.q.is_empty() || h.hostname.to_lowercase().contains(&f.q.to_lowercase()))
        .filter(|h| f.state.is_empty() || state_of(h) == f.state)
        .filter(|h| f.version.is_empty() || version_of(h) == f.version)
        .filter(|h| match &sel {
            Ok(sel) => sel.matches(&h.hostname, &h.labels),
            Err(_) => true,
        })
        .collect();
    let shown = hosts.len().min(1000);
    let filters = html! {
        form.filters #host-filter method="get" action="/ui/hosts" {
            input #q name="q" placeholder="name contains" value=(f.q);
            select name="state" {
                option value="" { "any state" }
                @for st in ["online", "stale", "offline"] {
                    option value=(st) selected[f.state == st] { (st) }
                }
            }
            input name="version" placeholder="version" value=(f.version);
            input name="selector" placeholder="role=web,site!=us" value=(f.selector);
            button #filter type="submit" { "Filter" }
        }
        @if let Err(e) = &sel { p.error { "selector: " (e.to_string()) } }
    };
    let live = html! {
        p.hint { (hosts.len()) " host(s)" @if shown < hosts.len() { ", the first " (shown) " shown" } }
        div.scroll {
            table #hosts {
                thead { tr { th { "Host" } th { "State" } th { "Seen" } th { "Agent" } th { "Running" } th { "Watchdog" } th { "Labels" } th { "Last update" } } }
                tbody {
                    @for h in hosts.iter().take(shown) {
                        tr data-host=(h.hostname) {
                            td { a href=(format!("/ui/hosts/{}", h.hostname)) { (h.hostname) } }
                            td { span class=(format!("state {}", state_of(h))) { (state_of(h)) } }
                            td { (age(&h.last_seen)) }
                            td.version { (version_of(h)) }
                            td.agent-state { @if let Some(r) = &h.report { (format!("{:?}", r.agent_state).to_lowercase()) } @else { "-" } }
                            td { @if let Some(r) = &h.report { (r.watchdog_version) } }
                            td.labels { @for (k, v) in &h.labels { span.label { (k) "=" (v) } " " } }
                            td { @if let Some(u) = h.report.as_ref().and_then(|r| r.last_update.as_ref()) { (u.version.to_string()) " " (format!("{:?}", u.outcome)) ": " (u.message) } }
                        }
                    }
                }
            }
        }
    };
    page(&headers, "Hosts", &s, filters, live)
}

pub(super) async fn host_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> Response {
    let Ok(host) = palette_protocol::hostname::validate_hostname(&host) else {
        return page_error(StatusCode::BAD_REQUEST, "not a host name");
    };
    let Some(h) = state.hosts(None).into_iter().find(|h| h.hostname == host) else {
        return page_error(StatusCode::NOT_FOUND, &format!("no host {host}"));
    };
    let acks = state.host_acks(&host, 20).await.unwrap_or_default();
    let updates = state.update_history(&host, 20).await.unwrap_or_default();
    let configs = state.config_history(&host).await.unwrap_or_default();
    let desired = state
        .latest_config(&host, Some(palette_protocol::v2::ConfigSource::Desired))
        .await
        .ok()
        .flatten();
    let reported = state
        .latest_config(&host, Some(palette_protocol::v2::ConfigSource::Reported))
        .await
        .ok()
        .flatten();
    let diff = match (&desired, &reported) {
        (Some((_, d)), Some((_, r))) => {
            let (d, r) = (String::from_utf8_lossy(d), String::from_utf8_lossy(r));
            if d == r {
                Some("the host has the desired config".to_string())
            } else {
                Some(
                    similar::TextDiff::from_lines(r.as_ref(), d.as_ref())
                        .unified_diff()
                        .header("in place (reported)", "desired")
                        .to_string(),
                )
            }
        }
        _ => None,
    };
    let live = html! {
        dl.facts #host-facts {
            dt { "State" } dd { span class=(format!("state {}", state_of(&h))) #host-state { (state_of(&h)) } " — seen " (age(&h.last_seen)) " ago" @if let Some(i) = h.checkin_interval_secs { ", checks in every " (i) " s" } }
            @if let Some(r) = &h.report {
                dt { "Agent" } dd #host-agent { (version_of(&h)) ", " (format!("{:?}", r.agent_state).to_lowercase()) " (desired " (format!("{:?}", r.desired_state).to_lowercase()) ")" }
                dt { "Watchdog" } dd { (r.watchdog_version) }
                dt { "Platform" } dd { (r.platform) }
                @if let Some(p) = &r.update_progress { dt { "Updating" } dd { (p.version.to_string()) " " (format!("{:?}", p.phase)) } }
                @if let Some(t) = &r.local_trouble { dt { "Trouble" } dd.error { (t) } }
            } @else {
                dt { "Kind" } dd { "a legacy (v1) host" }
            }
            dt { "Labels" } dd { @for (k, v) in &h.labels { span.label { (k) "=" (v) } " " } }
        }
        h2 { "Recent commands" }
        div.scroll { table { @for (kind, a) in &acks { tr { td { (a.at) } td { "#" (a.id) } td { (kind.as_str()) } td { (format!("{:?}", a.outcome)) } td { (a.message) } } } } }
        h2 { "Updates" }
        div.scroll { table #host-updates { @for u in &updates { tr { td { (u.at) } td { (u.product) } td { (u.version.to_string()) } td { (format!("{:?}", u.outcome)) } td { (u.message) } } } } }
        h2 { "Config" }
        @match &diff {
            Some(d) => pre.diff { (d) },
            None => p.hint { "No desired and reported config to compare yet." },
        }
        div.scroll { table { @for c in configs.iter().take(10) { tr { td { (c.created_at) } td { "revision " (c.revision) } td { (c.source.as_str()) } td { (c.size) " bytes" } } } } }
    };
    let actions = html! {
        form.inline method="post" action="/ui/commands" {
            (csrf(&s))
            input type="hidden" name="hosts" value=(h.hostname);
            @for k in ["start", "stop", "restart"] {
                button name="kind" value=(k) id=(format!("host-{k}")) { (k) }
            }
        }
    };
    page(&headers, &format!("Host {host}"), &s, actions, live)
}
