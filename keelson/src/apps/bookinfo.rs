//! The bookinfo product page as users of the sample know it (docs/GATEWAY.md, "Bookinfo"):
//! an HTML page with the book's details and its reviews, whose stars show which reviews
//! version answered (none from v1, black from v2, red from v3), the signed-in user carried
//! to the services behind as `end-user` (what the sample's routing rules match), and the
//! JSON API, health check and stylesheet beside it.
//!
//! - `/` an index page, `/productpage[?u=normal]` the page;
//! - `/login` (a form POST of `username`, or `?username=`) signs in: cookie `session`, then
//!   back to the page; `/logout` signs out;
//! - `/api/v1/products`, `/api/v1/products/<id>`, `/api/v1/products/<id>/reviews`,
//!   `/api/v1/products/<id>/ratings`: JSON;
//! - `/health`: JSON; `/static/style.css`.
//!
//! The page names every service version that answered in its footer, so a walkthrough (and
//! a test) sees the routing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{call_with, App, PROPAGATED};

/// How long the page waits for reviews, per try, and how many tries: a slow reviews
/// service (a delay fault on ratings behind it) shows as unavailable after 2 × 3 s.
const REVIEWS_TIMEOUT: Duration = Duration::from_secs(3);
const REVIEWS_TRIES: u32 = 2;
const DETAILS_TIMEOUT: Duration = Duration::from_secs(3);

const STYLE: &str = "body{font-family:sans-serif;margin:0}
nav{background:#1f2d3d;color:#fff;padding:.6em 1em;display:flex;justify-content:space-between}
nav a,nav button{color:#fff}
main{padding:1em 2em}
.columns{display:flex;gap:3em}
table.details td{padding:.2em 1em .2em 0}
blockquote{margin:1em 0;border-left:3px solid #ccc;padding-left:1em}
.stars{font-size:1.3em}
footer{color:#888;font-size:.8em;padding:1em 2em}
.error{color:#a00}
";

/// Serves the product page's paths (404 for any other).
pub(super) async fn serve(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segments.as_slice() {
        [] | ["index.html"] => html(StatusCode::OK, app, index()),
        ["productpage"] => product_page(app, &req).await,
        ["login"] => login(req).await,
        ["logout"] => redirect("/productpage", Some("session=; Path=/; Max-Age=0")),
        ["health"] => json(
            StatusCode::OK,
            app,
            serde_json::json!({"status": "Product page is healthy"}),
        ),
        ["static", "style.css"] => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/css")
            .body(Full::new(Bytes::from_static(STYLE.as_bytes())))
            .unwrap(),
        ["api", "v1", "products"] => json(
            StatusCode::OK,
            app,
            serde_json::json!([{
                "id": 0, "title": "The Comedy of Errors",
                "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: one of William Shakespeare's early plays, his shortest and one of his most farcical comedies.",
            }]),
        ),
        ["api", "v1", "products", id] => api(app, &req, "details", id).await,
        ["api", "v1", "products", id, "reviews"] => api(app, &req, "reviews", id).await,
        ["api", "v1", "products", id, "ratings"] => api(app, &req, "ratings", id).await,
        _ => html(StatusCode::NOT_FOUND, app, "<h1>Not found</h1>".to_string()),
    }
}

/// The signed-in user: the `session` cookie.
fn user(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == "session" && !v.is_empty()).then(|| v.to_string())
        })
}

/// The headers passed on to the services behind: the request's routing and trace headers,
/// and `end-user` for the signed-in user (else as the request had it).
fn forwarded(req: &Request<Incoming>) -> Vec<(String, String)> {
    let user = user(req);
    let mut out: Vec<(String, String)> = PROPAGATED
        .iter()
        .filter(|h| **h != "end-user" || user.is_none())
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    if let Some(u) = user {
        out.push(("end-user".into(), u));
    }
    out
}

async fn api(app: &App, req: &Request<Incoming>, service: &str, id: &str) -> Response<Full<Bytes>> {
    let body = call_with(
        app,
        service,
        &format!("/{service}/{id}"),
        &forwarded(req),
        DETAILS_TIMEOUT,
    )
    .await;
    let status = if body.get("error").is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(status, app, body)
}

/// Signs in: the user from a form POST (`username=...`) or the query; a session cookie, and
/// back to the page.
async fn login(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form = String::from_utf8_lossy(&body).into_owned();
    let name = [form.as_str(), query.as_str()]
        .iter()
        .flat_map(|s| s.split('&'))
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "username").then(|| decode(v))
        })
        .filter(|u| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        });
    match name {
        Some(u) => redirect("/productpage", Some(&format!("session={u}; Path=/"))),
        None => redirect("/productpage", None),
    }
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn redirect(to: &str, cookie: Option<&str>) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(StatusCode::FOUND)
        .header(hyper::header::LOCATION, to)
        .header("content-type", "text/html; charset=utf-8");
    if let Some(c) = cookie {
        r = r.header(hyper::header::SET_COOKIE, c);
    }
    r.body(Full::new(Bytes::from_static(
        b"<a href=\"/productpage\">productpage</a>\n",
    )))
    .unwrap()
}

fn html(status: StatusCode, app: &App, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("x-keelson-app", app.id())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn json(status: StatusCode, app: &App, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-keelson-app", app.id())
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .unwrap()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, nav: &str, main: &str, footer: &str) -> String {
    format!(
        "<!DOCTYPE html>
<html>
<head>
<meta charset=\"utf-8\">
<title>{title}</title>
<link rel=\"stylesheet\" href=\"/static/style.css\">
</head>
<body>
<nav><span>BookInfo Sample</span>{nav}</nav>
<main>
{main}
</main>
<footer>{footer}</footer>
</body>
</html>
"
    )
}

fn index() -> String {
    page(
        "Simple Bookstore App",
        "",
        "<h2>Hello! This is the bookinfo sample, served by Keelson's bundled apps.</h2>
<p>The product page calls the details service and one of three versions of the reviews
service; reviews v2 and v3 call the ratings service.</p>
<ul>
<li><a href=\"/productpage?u=normal\">Product page as a normal user</a></li>
<li><a href=\"/productpage?u=test\">Product page as a test user</a></li>
<li><a href=\"/api/v1/products\">The products API</a></li>
</ul>",
        "",
    )
}

async fn product_page(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let forward = forwarded(req);
    let reviews = async {
        let mut last = serde_json::Value::Null;
        for _ in 0..REVIEWS_TRIES {
            last = call_with(app, "reviews", "/reviews/0", &forward, REVIEWS_TIMEOUT).await;
            if last.get("error").is_none() {
                break;
            }
        }
        last
    };
    let (details, reviews) = tokio::join!(
        call_with(app, "details", "/details/0", &forward, DETAILS_TIMEOUT),
        reviews
    );
    let user = user(req);
    let nav = match &user {
        Some(u) => format!(
            "<form method=\"post\" action=\"/logout\"><span>signed in as <b class=\"user\">{}</b></span> <button type=\"submit\">Sign out</button></form>",
            escape(u)
        ),
        None => "<form method=\"post\" action=\"/login\"><input name=\"username\" placeholder=\"User Name\"> <input name=\"passwd\" type=\"password\" placeholder=\"Password\"> <button type=\"submit\">Sign in</button></form>".to_string(),
    };
    let mut served = vec![app.id()];
    let details_html = match details.get("error") {
        Some(_) => "<h4 class=\"error\">Error fetching product details!</h4><p class=\"error\">Sorry, product details are currently unavailable for this book.</p>".to_string(),
        None => {
            served.extend(details["service"].as_str().map(str::to_string));
            let field = |k: &str| escape(details[k].to_string().trim_matches('"'));
            format!(
                "<h4>Book Details</h4>
<table class=\"details\">
<tr><td><b>Type:</b></td><td>{}</td></tr>
<tr><td><b>Pages:</b></td><td>{}</td></tr>
<tr><td><b>Publisher:</b></td><td>{}</td></tr>
<tr><td><b>Language:</b></td><td>{}</td></tr>
<tr><td><b>ISBN-10:</b></td><td>{}</td></tr>
<tr><td><b>ISBN-13:</b></td><td>{}</td></tr>
</table>",
                field("type"),
                field("pages"),
                field("publisher"),
                field("language"),
                field("ISBN-10"),
                field("ISBN-13"),
            )
        }
    };
    let reviews_html = match reviews.get("error") {
        Some(_) => "<h4 class=\"error\">Error fetching product reviews!</h4><p class=\"error\">Sorry, product reviews are currently unavailable for this book.</p>".to_string(),
        None => {
            served.extend(reviews["service"].as_str().map(str::to_string));
            served.extend(reviews["ratings"]["service"].as_str().map(str::to_string));
            let mut out = String::from("<h4>Book Reviews</h4>\n");
            for r in reviews["reviews"].as_array().into_iter().flatten() {
                let who = r["reviewer"].as_str().unwrap_or("");
                out.push_str(&format!(
                    "<blockquote><p>{}</p><small>{}</small>",
                    escape(r["text"].as_str().unwrap_or("")),
                    escape(who)
                ));
                if let Some(color) = reviews["color"].as_str() {
                    match reviews["ratings"]["ratings"][who].as_u64() {
                        Some(n) => {
                            let n = n.min(5) as usize;
                            out.push_str(&format!(
                                "<div class=\"stars\" style=\"color: {color}\" data-rating=\"{n}\">{}{}</div>",
                                "\u{2605}".repeat(n),
                                "\u{2606}".repeat(5 - n)
                            ));
                        }
                        None => out.push_str(
                            "<p class=\"error\"><i>Ratings service is currently unavailable</i></p>",
                        ),
                    }
                }
                out.push_str("</blockquote>\n");
            }
            out
        }
    };
    let main = format!(
        "<h3>The Comedy of Errors</h3>
<p><a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: one of
William Shakespeare's early plays, his shortest and one of his most farcical comedies.</p>
<div class=\"columns\">
<div class=\"details\">{details_html}</div>
<div class=\"reviews\">{reviews_html}</div>
</div>"
    );
    let footer = format!(
        "served by <span class=\"served-by\">{}</span>",
        served.join(" ")
    );
    html(
        StatusCode::OK,
        app,
        page("Simple Bookstore App", &nav, &main, &footer),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_values_decode() {
        assert_eq!(super::decode("jason"), "jason");
        assert_eq!(super::decode("a+b%40c"), "a b@c");
        assert_eq!(super::decode("%zz"), "%zz");
        assert_eq!(super::decode("x%4"), "x%4");
    }
}
