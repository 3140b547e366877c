//! The releases page and withdrawal.

#[allow(unused_imports)]
use super::*;

pub(super) async fn releases_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let mut rel = state.releases();
    rel.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
    let live = html! {
        div.scroll {
            table #releases {
                thead { tr { th { "Id" } th { "Product" } th { "Version" } th { "Platform" } th { "Kind" } th { "Published" } th { "Status" } th {} } }
                tbody {
                    @for r in &rel {
                        tr {
                            td { (r.id) } td { (r.product) } td { (r.version.to_string()) } td { (r.platform) } td { (r.kind.as_str()) } td { (r.created_at) }
                            td {
                                @if r.rolled_back_at.is_some() { "rolled back" }
                                @else if r.withdrawn_at.is_some() { "withdrawn" }
                                @else if r.held { "held" }
                                @else { "offered" }
                                @if r.manifest.is_some() { " · signed" }
                            }
                            td {
                                @if r.withdrawn_at.is_none() {
                                    form.inline method="post" action=(format!("/ui/releases/{}/withdraw", r.id)) {
                                        (csrf(&s))
                                        button.danger type="submit" { "Withdraw" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &headers,
        "Releases",
        &s,
        html! { p.hint { "Publish with " code { "palettectl release publish" } "." } },
        live,
    )
}

pub(super) async fn withdraw(
    State(state): State<AppState>,
    s: UiSession,
    Path(id): Path<i64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let audit = s.entry(
        "release.withdraw",
        format!("{} (dashboard)", crate::http::v2::release_words(&state, id)),
    );
    match state.withdraw(id, Some(&audit)).await {
        Ok(Some(_)) => Redirect::to("/ui/releases").into_response(),
        Ok(None) => page_error(StatusCode::NOT_FOUND, &format!("no release {id}")),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &e.public_reason()),
    }
}
