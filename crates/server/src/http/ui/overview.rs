//! The fleet page: counts by state, the version mix over the last day.

#[allow(unused_imports)]
use super::*;

pub(super) fn age(seen: &str) -> String {
    let Ok(t) = palette_protocol::timefmt::parse_rfc3339(seen) else {
        return "?".into();
    };
    let s = ((now_ms() - t).max(0) / 1000) as u64;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub(super) fn state_of(h: &HostInfo) -> &'static str {
    h.state.unwrap_or(HostState::Offline).as_str()
}

pub(super) async fn fleet(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let hosts = state.hosts(None);
    let mut by_state = [0u64; 3];
    for h in &hosts {
        by_state[match h.state {
            Some(HostState::Online) => 0,
            Some(HostState::Stale) => 1,
            _ => 2,
        }] += 1;
    }
    let mix = version_mix(&hosts);
    let max = mix.values().copied().max().unwrap_or(1).max(1);
    let rollouts = state.rollout_list();
    let samples = match samples(&state).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let live = html! {
        section.cards {
            div.card { div.big #count-hosts { (hosts.len()) } div { "hosts" } }
            div.card.ok { div.big #count-online { (by_state[0]) } div { "online" } }
            div.card.warn { div.big { (by_state[1]) } div { "stale" } }
            div.card.bad { div.big { (by_state[2]) } div { "offline" } }
        }
        h2 { "Agent versions" }
        table.bars #versions {
            @for (v, n) in &mix {
                tr {
                    td { (v) }
                    td.bar { span style=(format!("width:{}%", n * 100 / max)) {} }
                    td.num { (n) }
                }
            }
        }
        h2 { "Version mix over time" }
        (chart(&samples))
        h2 { "Rollouts in progress" }
        @let active: Vec<_> = rollouts.iter().filter(|r| matches!(r.phase, crate::rollout::Phase::Running | crate::rollout::Phase::Paused | crate::rollout::Phase::Halted)).collect();
        @if active.is_empty() { p.hint { "None." } }
        @for r in active {
            p { a href=(format!("/ui/rollouts/{}", r.id)) { "Rollout " (r.id) " of " (r.version.to_string()) } " — " span.phase { (r.phase.as_str()) } ", wave " (r.wave) " of " (r.waves.len()) }
        }
    };
    page(&headers, "Fleet", &s, html! {}, live)
}

/// A stacked bar chart of the version mix, one bar per sample (inline SVG).
pub(super) fn chart(samples: &[(Millis, BTreeMap<String, u64>)]) -> Markup {
    if samples.is_empty() {
        return html! { p.hint { "No samples yet (one a minute)." } };
    }
    let versions: Vec<String> = {
        let mut v: Vec<String> = samples
            .iter()
            .flat_map(|(_, m)| m.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let colours = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
    ];
    let (w, h) = (600.0f64, 160.0f64);
    let bw = w / samples.len() as f64;
    let mut rects = String::new();
    for (i, (_, m)) in samples.iter().enumerate() {
        let total: u64 = m.values().sum::<u64>().max(1);
        let mut y = h;
        for (vi, v) in versions.iter().enumerate() {
            let n = *m.get(v).unwrap_or(&0);
            if n == 0 {
                continue;
            }
            let bh = h * n as f64 / total as f64;
            y -= bh;
            rects.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                i as f64 * bw,
                y,
                bw.max(1.0),
                bh,
                colours[vi % colours.len()],
                html! { (v) }.into_string(),
                n
            ));
        }
    }
    html! {
        svg.chart #mix-chart viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" {
            (PreEscaped(rects))
        }
        p.legend {
            @for (vi, v) in versions.iter().enumerate() {
                span.swatch style=(format!("background:{}", colours[vi % colours.len()])) {} " " (v) " "
            }
            " — from " (rfc3339_millis(samples[0].0)) " to " (rfc3339_millis(samples[samples.len() - 1].0))
        }
    }
}
