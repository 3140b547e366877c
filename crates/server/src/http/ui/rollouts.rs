//! Rollouts: the list, one rollout, creating one and its buttons.

#[allow(unused_imports)]
use super::*;

pub(super) fn rollout_row(r: &crate::fleet::rollouts::RolloutStatus) -> Markup {
    html! {
        tr data-rollout=(r.id) {
            td { a href=(format!("/ui/rollouts/{}", r.id)) { (r.id) } }
            td { (r.product) " " (r.version.to_string()) }
            td { (r.selector) }
            td.phase { (r.phase.as_str()) }
            td { (r.wave) " / " (r.waves.len()) }
            td { @for w in &r.wave_progress { span.wave { (w.succeeded) "/" (w.hosts) @if w.failed > 0 { " (" (w.failed) " failed)" } } " " } }
        }
    }
}

pub(super) async fn rollouts_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let rollouts = state.rollout_list();
    let releases: Vec<_> = state
        .releases()
        .into_iter()
        .filter(|r| r.withdrawn_at.is_none() && r.product != "watchdog")
        .collect();
    let form = html! {
        details.card open[rollouts.is_empty()] {
            summary { "Start a rollout" }
            form #rollout-form method="post" action="/ui/rollouts" {
                (csrf(&s))
                label { "Release " select name="release_id" #rollout-release {
                    @for r in releases.iter().rev() { option value=(r.id) { (r.product) " " (r.version.to_string()) " " (r.platform) @if r.held { " (held)" } } }
                } }
                label { "Selector " input name="selector" placeholder="role=web (empty: every host)"; }
                label { "Waves " input name="waves" value="1,25%,100%"; }
                label { "Soak (seconds) " input name="soak_secs" value="600" inputmode="numeric"; }
                label { "Halt after " input name="halt_after" value="1"; }
                label { "At most at once " input name="max_concurrent" value="0" inputmode="numeric"; }
                button #start-rollout type="submit" { "Start" }
            }
        }
    };
    let live = html! {
        div.scroll {
            table #rollouts {
                thead { tr { th { "Id" } th { "Release" } th { "Selector" } th { "Phase" } th { "Wave" } th { "Progress" } } }
                tbody { @for r in &rollouts { (rollout_row(r)) } }
            }
        }
    };
    page(&headers, "Rollouts", &s, form, live)
}

pub(super) async fn create_rollout(
    State(state): State<AppState>,
    s: UiSession,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let get = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let Ok(release_id) = get("release_id").parse::<i64>() else {
        return page_error(StatusCode::BAD_REQUEST, "choose a release");
    };
    let new = crate::fleet::rollouts::NewRollout {
        release_id,
        selector: get("selector"),
        waves: get("waves")
            .split(',')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect(),
        soak_secs: get("soak_secs").parse().unwrap_or(0),
        halt_after: Some(get("halt_after")).filter(|h| !h.is_empty()),
        max_concurrent: get("max_concurrent").parse().unwrap_or(0),
    };
    let audit = s.entry(
        "rollout.create",
        format!("{} (dashboard)", crate::http::v2::rollout_words(&new)),
    );
    match state.create_rollout(new, Some(&audit)).await {
        Ok(r) => Redirect::to(&format!("/ui/rollouts/{}", r.id)).into_response(),
        Err(e) => page_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

pub(super) async fn rollout_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let Some(r) = state.rollout(id) else {
        return page_error(StatusCode::NOT_FOUND, &format!("no rollout {id}"));
    };
    let buttons = html! {
        form.inline #rollout-actions method="post" {
            (csrf(&s))
            button #pause formaction=(format!("/ui/rollouts/{id}/pause")) { "Pause" }
            button #resume formaction=(format!("/ui/rollouts/{id}/resume")) { "Resume" }
            button.danger #abort formaction=(format!("/ui/rollouts/{id}/abort")) { "Abort" }
        }
    };
    let live = html! {
        p { "Phase: " strong #rollout-phase { (r.phase.as_str()) } ", wave " span #rollout-wave { (r.wave) } " of " (r.waves.len()) " (" (r.waves.join(", ")) "), soak " (r.soak_secs) " s, halt after " (r.halt_after) }
        @if let Some(why) = &r.reason { p.error #rollout-reason { (why) } }
        div.scroll { table #waves {
            thead { tr { th { "Wave" } th { "Hosts" } th { "Admitted" } th { "Succeeded" } th { "Failed" } } }
            tbody { @for w in &r.wave_progress { tr { td { (w.wave) } td { (w.hosts) } td { (w.admitted) } td { (w.succeeded) } td { (w.failed) } } } }
        } }
        div.scroll { table #rollout-hosts {
            @for h in &r.hosts { tr { td { (h.wave) } td { a href=(format!("/ui/hosts/{}", h.hostname)) { (h.hostname) } } td { @match h.outcome { Some(Outcome::Succeeded) => "succeeded", Some(Outcome::Failed) => "failed", None => { @if h.admitted_at.is_some() { "updating" } @else { "waiting" } } } } td { (h.message) } } }
        } }
    };
    page(
        &headers,
        &format!("Rollout {id}: {} {}", r.product, r.version),
        &s,
        buttons,
        live,
    )
}

pub(super) async fn rollout_action(
    State(state): State<AppState>,
    s: UiSession,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let action: &'static str = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "abort" => "abort",
        _ => return page_error(StatusCode::NOT_FOUND, "no such action"),
    };
    let audit = s.entry(
        &format!("rollout.{action}"),
        format!("rollout {id} (dashboard)"),
    );
    match state.rollout_action(id, action, Some(&audit)).await {
        Ok(_) => Redirect::to(&format!("/ui/rollouts/{id}")).into_response(),
        Err(e) => page_error(StatusCode::CONFLICT, &e.to_string()),
    }
}
