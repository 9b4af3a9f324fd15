//! GraphiQL that works offline: the page built from `graphiql/` (GraphiQL 5, see its
//! README) is embedded in the binary at compile time, so neither a browser nor the build
//! needs the internet or Node.js. [`page`] answers `GET /graphql` for browsers; [`routes`]
//! serves the page's scripts, styles, fonts and workers under `/graphiql/`.
//!
//! The page loads nothing from anywhere else: its [`CONTENT_SECURITY_POLICY`] says so to
//! the browser too.

use std::borrow::Cow;

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use rust_embed::RustEmbed;

use crate::error::AppError;

/// `graphiql/dist/`, the output of `npm run build` in `graphiql/`.
#[derive(RustEmbed)]
#[folder = "graphiql/dist/"]
struct Dist;

/// The URL prefix [`routes`] serves the embedded files under (Vite's `base`).
pub const PREFIX: &str = "/graphiql/";

/// Only this origin, for everything. Monaco sets styles inline (`'unsafe-inline'` for
/// styles only); the fonts are `data:` URLs inside the stylesheets; Monaco's workers are
/// same-origin scripts under [`PREFIX`]. `connect-src 'self'` covers `ws:`/`wss:` to this
/// host too (CSP Level 3), which the subscriptions at `/graphql/ws` use.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; font-src 'self' data:; img-src 'self' data:; \
     worker-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Hashed asset names never change content: browsers may keep them for a year.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The GraphiQL page (`text/html`), always revalidated so a new build shows at once.
pub fn page() -> Response {
    match Dist::get("index.html") {
        Some(file) => html(file.data),
        None => AppError::Internal(anyhow::anyhow!("graphiql/dist/index.html is not in the binary: build graphiql/"))
            .into_response(),
    }
}

/// `body` borrows the binary's copy (no allocation per request).
fn html(body: Cow<'static, [u8]>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    (headers, body).into_response()
}

/// `GET /graphiql/{*path}`: the embedded files of the page.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/graphiql/{*path}", get(asset))
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if path == "index.html" {
        return page();
    }
    let Some(file) = Dist::get(&path) else {
        return AppError::not_found(format!("no GraphiQL file {PREFIX}{path}")).into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let cache = if path.starts_with("assets/") { IMMUTABLE } else { "no-cache" };
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_response()
    };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    response
}

/// Whether the request's `If-None-Match` names `etag` (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|value| value.to_str().ok()).any(|value| {
        value.split(',').map(|tag| tag.trim().trim_start_matches("W/")).any(|tag| tag == etag || tag == "*")
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The media type of an embedded file, by its extension.
fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, extension)| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("otf") => "font/otf",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(path: &str, headers: &[(header::HeaderName, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        routes::<()>().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn text(response: Response) -> String {
        String::from_utf8(to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
    }

    fn index() -> String {
        String::from_utf8(Dist::get("index.html").expect("graphiql/dist/index.html is embedded").data.into_owned())
            .unwrap()
    }

    /// The values of every `src="…"` and `href="…"` in `html`.
    fn references(html: &str) -> Vec<String> {
        let mut found = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            let mut rest = html;
            while let Some(at) = rest.find(attribute) {
                rest = &rest[at + attribute.len()..];
                let end = rest.find('"').unwrap();
                found.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
        found
    }

    #[tokio::test]
    async fn the_page_is_served_with_its_headers() {
        let response = page();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        let body = text(response).await;
        assert!(body.contains("<title>Emporium · GraphiQL</title>"), "{body}");
        assert!(body.contains("id=\"graphiql\""), "{body}");
    }

    #[test]
    fn the_page_references_only_its_own_assets_and_they_are_embedded() {
        let html = index();
        let references = references(&html);
        assert!(references.iter().any(|reference| reference.ends_with(".js")), "{references:?}");
        assert!(references.iter().any(|reference| reference.ends_with(".css")), "{references:?}");
        for reference in &references {
            let path = reference.strip_prefix(PREFIX).unwrap_or_else(|| panic!("{reference} is not under {PREFIX}"));
            assert!(Dist::get(path).is_some(), "{reference} is referenced by index.html but not embedded");
        }
        assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    }

    #[test]
    fn every_asset_that_an_embedded_script_or_stylesheet_names_is_embedded() {
        // Vite writes the URLs of chunks, workers and fonts into the scripts and
        // stylesheets as `assets/<name>-<hash>.<extension>`.
        let embedded: Vec<String> = Dist::iter().map(|path| path.into_owned()).collect();
        let mut checked = 0;
        for path in embedded.iter().filter(|path| path.ends_with(".js") || path.ends_with(".css")) {
            let text = String::from_utf8_lossy(&Dist::get(path).unwrap().data).into_owned();
            for (at, _) in text.match_indices("assets/") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_'))
                    .collect();
                let is_file = [".js", ".css", ".ttf", ".woff", ".woff2", ".svg"].iter().any(|e| name.ends_with(e));
                if is_file && name.len() > "assets/".len() {
                    assert!(embedded.contains(&name), "{path} names {name}, which is not embedded");
                    checked += 1;
                }
            }
        }
        // At least Monaco's three workers and the page's lazily loaded chunks.
        assert!(checked >= 5, "only {checked} asset references found");
    }

    #[test]
    fn the_licences_of_what_is_bundled_are_embedded() {
        let licences = Dist::get("THIRD_PARTY_LICENSES.txt").expect("THIRD_PARTY_LICENSES.txt is embedded");
        let licences = String::from_utf8_lossy(&licences.data).into_owned();
        for package in ["graphiql@", "react@", "monaco-editor@", "graphql@", "graphql-ws@"] {
            assert!(licences.contains(package), "no licence for {package}");
        }
    }

    #[tokio::test]
    async fn assets_are_served_with_their_type_and_cached_for_good() {
        let html = index();
        let script = references(&html).into_iter().find(|reference| reference.ends_with(".js")).unwrap();
        let response = get(&script, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(response.headers()[header::CACHE_CONTROL], IMMUTABLE);
        let etag = response.headers()[header::ETAG].to_str().unwrap().to_string();
        assert!(!text(response).await.is_empty());

        let again = get(&script, &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

        let licences = get("/graphiql/THIRD_PARTY_LICENSES.txt", &[]).await;
        assert_eq!(licences.status(), StatusCode::OK);
        assert_eq!(licences.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(licences.headers()[header::CACHE_CONTROL], "no-cache");

        let page = get("/graphiql/index.html", &[]).await;
        assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    }

    #[tokio::test]
    async fn an_unknown_file_is_a_json_404() {
        for path in ["/graphiql/assets/nope.js", "/graphiql/../Cargo.toml", "/graphiql/%2e%2e/Cargo.toml"] {
            let response = get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json", "{path}");
            let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
            assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}");
            assert!(body["error"]["message"].as_str().unwrap().contains("no GraphiQL file"), "{path}");
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("assets/index-abc.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-abc.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("assets/codicon-abc.ttf"), "font/ttf");
        assert_eq!(content_type("assets/x.woff2"), "font/woff2");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("THIRD_PARTY_LICENSES.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
