//! Commands: the list and sending one.

#[allow(unused_imports)]
use super::*;

pub(super) async fn commands_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let list = state.command_statuses(50).await.unwrap_or_default();
    let form = html! {
        form.card #command-form method="post" action="/ui/commands" {
            (csrf(&s))
            label { "Hosts " input #command-hosts name="hosts" placeholder="web-1, web-2"; }
            label { "or selector " input name="selector" placeholder="role=web"; }
            div.buttons {
                @for k in ["start", "stop", "restart"] {
                    button name="kind" value=(k) id=(format!("send-{k}")) { (k) }
                }
            }
        }
    };
    let live = html! {
        div.scroll { table #commands {
            thead { tr { th { "Id" } th { "Kind" } th { "Issued" } th { "Target" } th { "Results" } } }
            tbody { @for st in &list { tr data-command=(st.command.id) {
                td { (st.command.id) } td { (st.command.kind.as_str()) } td { (st.command.issued_at) }
                td { @match &st.target { Target::All => "all", Target::Hosts(h) => (h.join(", ")) } }
                td { @for a in &st.results { span class=(format!("ack {}", if a.outcome == Outcome::Succeeded { "ok" } else { "bad" })) { (a.hostname) ": " (format!("{:?}", a.outcome)) } " " } }
            } } }
        } }
    };
    page(&headers, "Commands", &s, form, live)
}

pub(super) async fn send_command(
    State(state): State<AppState>,
    s: UiSession,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let kind = match form.get("kind").map(String::as_str) {
        Some("start") => CommandKind::Start,
        Some("stop") => CommandKind::Stop,
        Some("restart") => CommandKind::Restart,
        _ => return page_error(StatusCode::BAD_REQUEST, "choose start, stop or restart"),
    };
    let mut hosts: Vec<String> = Vec::new();
    for h in form
        .get("hosts")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        match palette_protocol::hostname::validate_hostname(h) {
            Ok(h) => hosts.push(h),
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &format!("{h:?}: {e}")),
        }
    }
    let selector = form.get("selector").map(|s| s.trim()).unwrap_or("");
    if !selector.is_empty() {
        let sel = match Selector::parse(selector) {
            Ok(s) => s,
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        hosts.extend(
            state
                .hosts(None)
                .into_iter()
                .filter(|h| sel.matches(&h.hostname, &h.labels))
                .map(|h| h.hostname),
        );
    }
    hosts.sort();
    hosts.dedup();
    if hosts.is_empty() {
        return page_error(
            StatusCode::BAD_REQUEST,
            "name the hosts, or a selector that matches some",
        );
    }
    let target = Target::Hosts(hosts.clone());
    let audit = s.entry(
        "command.create",
        format!(
            "command {{id}} {} to {}, ttl {} s (dashboard)",
            kind.as_str(),
            crate::http::v2::target_words(&target),
            crate::fleet::DEFAULT_COMMAND_TTL_SECS
        ),
    );
    match state
        .issue_command(
            kind,
            target,
            crate::fleet::DEFAULT_COMMAND_TTL_SECS,
            Some(&audit),
        )
        .await
    {
        Ok(_) => Redirect::to("/ui/commands").into_response(),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &e.public_reason()),
    }
}
