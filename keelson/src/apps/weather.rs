//! The weather demo (docs/DEMOS.md): the services a canary, fault, timeout, retry,
//! mirroring and circuit-breaking walkthrough needs.
//!
//! - `frontend` (v1, v2): `/` an HTML page with the forecast for `?city=` and an
//!   advertisement (v2 has a new look: a banner naming it); `/api/weather?city=` the same as
//!   JSON. It calls `advertisement` and `forecast` (4 s each) and shows "Forecast
//!   unavailable" when the forecast does not come.
//! - `advertisement` (v1): `/ad`, an advertisement.
//! - `forecast` (v1, v2): `/forecast?city=`, three days of weather; v2 adds a
//!   recommendation from `recommendation` (2 s).
//! - `recommendation` (v1): `/recommendation?weather=`, what to take along.
//!
//! Every answer names the version that made it; calls pass on the routing headers
//! (`cookie`, `user-agent`, `end-user`, `x-canary`, trace context). Each app takes the faults
//! of its container's environment (`DELAY_MS`, `FAIL_PERCENT`: see `apps.rs`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{call_with, App, PROPAGATED};

fn headers_of(req: &Request<Incoming>) -> Vec<(String, String)> {
    PROPAGATED
        .iter()
        .chain(["x-canary"].iter())
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}

fn json(app: &App, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("x-keelson-app", app.id())
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .unwrap()
}

/// Serves the weather app `app` is.
pub(super) async fn serve(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let id = app.id();
    // Only letters, digits, spaces and dashes: it is written into the page.
    let city: String = query(&req, "city")
        .unwrap_or_else(|| "London".into())
        .replace("%20", " ")
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .take(64)
        .collect();
    match app.opts.name.as_str() {
        "advertisement" => json(
            app,
            serde_json::json!({"service": id, "ad": "Umbrellas half price this week"}),
        ),
        "recommendation" => {
            let weather = query(&req, "weather").unwrap_or_else(|| "sunny".into());
            let text = match weather.as_str() {
                "rainy" => "Take an umbrella",
                "cloudy" => "Take a jacket",
                _ => "Take sunglasses",
            };
            json(
                app,
                serde_json::json!({"service": id, "recommendation": text}),
            )
        }
        "forecast" => {
            let days = ["sunny", "cloudy", "rainy"];
            let mut body = serde_json::json!({
                "service": id, "city": city,
                "days": days.iter().enumerate().map(|(i, w)| serde_json::json!({
                    "day": i + 1, "weather": w, "high": 18 + i, "low": 9 + i,
                })).collect::<Vec<_>>(),
            });
            if app.opts.version != "v1" {
                body["recommendation"] = call_with(
                    app,
                    "recommendation",
                    &format!("/recommendation?weather={}", days[0]),
                    &headers_of(&req),
                    Duration::from_secs(2),
                )
                .await;
            }
            json(app, body)
        }
        _ => frontend(app, &req, &city).await,
    }
}

async fn frontend(app: &App, req: &Request<Incoming>, city: &str) -> Response<Full<Bytes>> {
    let forward = headers_of(req);
    let path = format!("/forecast?city={}", city.replace(' ', "%20"));
    let (ad, forecast) = tokio::join!(
        call_with(
            app,
            "advertisement",
            "/ad",
            &forward,
            Duration::from_secs(4)
        ),
        call_with(app, "forecast", &path, &forward, Duration::from_secs(4))
    );
    let mut served = vec![app.id()];
    for v in [&ad, &forecast, &forecast["recommendation"]] {
        served.extend(v["service"].as_str().map(str::to_string));
    }
    if req.uri().path().starts_with("/api/") {
        return json(
            app,
            serde_json::json!({"service": app.id(), "ad": ad, "forecast": forecast, "servedBy": served}),
        );
    }
    let forecast_html = match forecast.get("error") {
        Some(e) => format!(
            "<p class=\"error\">Forecast unavailable ({})</p>",
            e.as_str().unwrap_or("")
        ),
        None => {
            let mut rows = String::new();
            for d in forecast["days"].as_array().into_iter().flatten() {
                rows.push_str(&format!(
                    "<tr><td>Day {}</td><td>{}</td><td>{}°/{}°</td></tr>",
                    d["day"],
                    d["weather"].as_str().unwrap_or(""),
                    d["high"],
                    d["low"]
                ));
            }
            let rec = forecast["recommendation"]["recommendation"]
                .as_str()
                .map(|r| format!("<p class=\"recommendation\">{r}</p>"))
                .unwrap_or_default();
            format!("<table class=\"forecast\">{rows}</table>{rec}")
        }
    };
    let ad_html = ad["ad"]
        .as_str()
        .map(|a| format!("<aside class=\"ad\">{a}</aside>"))
        .unwrap_or_default();
    let banner = if app.opts.version == "v1" {
        String::new()
    } else {
        format!(
            "<p class=\"banner\">The new look ({})</p>",
            app.opts.version
        )
    };
    let page = format!(
        "<!DOCTYPE html>
<html>
<head><meta charset=\"utf-8\"><title>Weather Forecast</title></head>
<body>
<h1>Weather Forecast for {city}</h1>
{banner}{forecast_html}
{ad_html}
<footer>served by <span class=\"served-by\">{}</span></footer>
</body>
</html>
",
        served.join(" ")
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("x-keelson-app", app.id())
        .body(Full::new(Bytes::from(page)))
        .unwrap()
}
