//! The pages served beside the calls: the web chat and the ops console. Plain HTML, CSS and
//! JavaScript written for the browser as it is (no build step), compiled into the binary.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

/// A file served as it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page {
    content_type: &'static str,
    body: &'static str,
}

/// Every page, by path.
const PAGES: &[(&str, Page)] = &[
    ("/", html(include_str!("../static/index.html"))),
    ("/chat", html(include_str!("../static/chat.html"))),
    ("/console", html(include_str!("../static/console.html"))),
    ("/assets/mesh.js", script(include_str!("../static/mesh.js"))),
    ("/assets/chat.js", script(include_str!("../static/chat.js"))),
    (
        "/assets/console.js",
        script(include_str!("../static/console.js")),
    ),
    (
        "/assets/style.css",
        Page {
            content_type: "text/css; charset=utf-8",
            body: include_str!("../static/style.css"),
        },
    ),
];

const fn html(body: &'static str) -> Page {
    Page {
        content_type: "text/html; charset=utf-8",
        body,
    }
}

const fn script(body: &'static str) -> Page {
    Page {
        content_type: "text/javascript; charset=utf-8",
        body,
    }
}

/// Whether `path` is the ops console's (served only with the admin API).
pub(crate) fn is_console(path: &str) -> bool {
    matches!(path, "/console" | "/assets/console.js")
}

/// The page at `path`.
pub(crate) fn page(path: &str) -> Option<Page> {
    PAGES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, page)| *page)
}

impl Page {
    pub(crate) fn response(self) -> Response<tonic::body::Body> {
        let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(
            self.body.as_bytes(),
        ))));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // scripts and styles from this origin only, no inline script: a message body that
        // looked like markup could not run even if a page wrote it as HTML
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }
}
