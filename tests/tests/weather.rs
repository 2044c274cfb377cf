//! The weather walkthrough (docs/DEMOS.md) through the ingress gateway: every file of
//! `examples/weather/` applied in turn on the local mesh, with what a user would see
//! checked: canaries by weight and by header, cookie and user agent at the gateway; at the
//! namespace's waypoint fault delay and abort, a timeout, retries, mirroring, circuit
//! breaking (with the fortio-style load client) and outlier ejection.

use std::time::{Duration, Instant};

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

fn example(path: &str) -> String {
    format!("{}/../examples/weather/{path}", env!("CARGO_MANIFEST_DIR"))
}

struct Demo {
    mesh: Mesh,
    url: String,
}

impl Demo {
    fn apply(&self, file: &str) -> String {
        self.mesh.ok(&["apply", "-f", &example(file)])
    }

    /// `/api/weather` from the machine, with extra curl arguments: the JSON.
    fn weather(&self, extra: &[&str]) -> serde_json::Value {
        let url = format!("{}/api/weather", self.url);
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["-o", "-", "-w", "", &url]);
        let (status, out) = self.mesh.curl_host(&args);
        assert_eq!(status, 200, "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn frontend(&self, extra: &[&str]) -> String {
        self.weather(extra)["service"].as_str().unwrap().to_string()
    }

    /// Polls until `n` answers in a row satisfy `ok`.
    fn settles(&self, n: usize, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let mut last = serde_json::Value::Null;
        let settled = eventually(20, || {
            (0..n).all(|_| {
                last = self.weather(&[]);
                ok(&last)
            })
        });
        assert!(settled, "{what}: last answer {last:#}");
    }

    /// How many requests a pod's app has served (read on its own address; this read is not
    /// counted, earlier reads are).
    fn served(&self, pod: &str) -> u64 {
        self.served_if_up(pod).unwrap_or(0)
    }

    /// [`Self::served`], `None` when the app did not answer.
    fn served_if_up(&self, pod: &str) -> Option<u64> {
        let ip = self.mesh.pod(pod)["ip"].as_str().unwrap().to_string();
        let out = self.mesh.exec(
            "frontend-v1-0",
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                &format!("http://{ip}:9080/requests"),
            ],
        );
        out.stdout.trim().parse().ok()
    }
}

fn forecast_ok(v: &serde_json::Value) -> bool {
    v["forecast"]["days"]
        .as_array()
        .is_some_and(|d| d.len() == 3)
}

#[test]
fn the_weather_walkthrough_through_the_ingress_gateway() {
    let mesh = Mesh::tagged("x");
    mesh.ok(&["up", &example("weather.yaml")]);
    let url = format!("http://{}:80", mesh.host_ip("istio-ingressgateway-0"));
    let d = Demo { mesh, url };
    d.apply("weather-gateway.yaml");
    d.apply("destination-rules.yaml");
    let page = d.mesh.curl_host_until(
        &[&format!("{}/?city=Oslo", d.url)],
        200,
        "Weather Forecast for Oslo",
    );
    assert!(
        page.contains("frontend-v1") && page.contains("advertisement-v1"),
        "{page}"
    );
    d.settles(3, "the gateway routes to frontend v1", |v| {
        v["service"] == "frontend-v1" && forecast_ok(v)
    });

    // Canary by weight: both versions, v2 the smaller share.
    d.apply("canary-weight.yaml");
    let mut v2 = 0;
    let mut v1 = 0;
    assert!(
        eventually(30, || {
            for _ in 0..40 {
                match d.frontend(&[]).as_str() {
                    "frontend-v2" => v2 += 1,
                    _ => v1 += 1,
                }
            }
            v2 > 0 && v1 > v2
        }),
        "v1 {v1}, v2 {v2} with 80/20"
    );

    // Canary by who asks.
    d.apply("canary-header.yaml");
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    for (args, want) in [
        (vec!["-H", "x-canary: true"], "frontend-v2"),
        (vec!["-b", "theme=dark; user=tester"], "frontend-v2"),
        (vec!["-A", firefox], "frontend-v2"),
        (vec!["-b", "user=someone"], "frontend-v1"),
        (vec![], "frontend-v1"),
    ] {
        let ok = eventually(15, || (0..5).all(|_| d.frontend(&args) == want));
        assert!(ok, "{args:?} should reach {want}");
    }

    // Fault delay on forecast: the page comes 3 s late, with its forecast.
    d.apply("fault-delay.yaml");
    let mut took = Duration::ZERO;
    assert!(
        eventually(20, || {
            let t0 = Instant::now();
            let v = d.weather(&[]);
            took = t0.elapsed();
            forecast_ok(&v) && took >= Duration::from_secs(3)
        }),
        "no delayed forecast (last took {took:?})"
    );

    // Fault abort on half the forecasts.
    d.apply("fault-abort.yaml");
    let (mut failed, mut ok) = (0, 0);
    assert!(
        eventually(30, || {
            for _ in 0..10 {
                let v = d.weather(&[]);
                if v["forecast"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("answered 500"))
                {
                    failed += 1;
                } else if forecast_ok(&v) {
                    ok += 1;
                }
            }
            failed > 0 && ok > 0
        }),
        "50% abort: {failed} failed, {ok} ok"
    );

    // A 1 s timeout on a recommendation that takes 3 s: the forecast (v2) comes in about a
    // second, without its recommendation.
    d.apply("recommendation-slow.yaml");
    d.apply("timeout.yaml");
    d.settles(2, "forecast v2 within the timeout", |v| {
        v["forecast"]["service"] == "forecast-v2"
            && v["forecast"]["recommendation"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("504"))
    });
    let t0 = Instant::now();
    let v = d.weather(&[]);
    assert!(
        t0.elapsed() < Duration::from_millis(2800),
        "{:?} {v}",
        t0.elapsed()
    );

    // Circuit breaking on the slow recommendation: one at a time, one waiting; the rest
    // are refused at once with 503 (fortio-style load from a pod in the mesh). The admitted
    // ones end in the 1 s timeout (504) still in place.
    d.apply("circuit-breaking.yaml");
    let bin = d.mesh.bin().to_str().unwrap().to_string();
    let mut report = String::new();
    assert!(
        eventually(30, || {
            let out = d.mesh.exec(
                "frontend-v1-0",
                &[
                    &bin,
                    "app",
                    "fortio",
                    "load",
                    "-c",
                    "4",
                    "-qps",
                    "0",
                    "-n",
                    "4",
                    "-timeout",
                    "10s",
                    "http://recommendation:9080/recommendation",
                ],
            );
            report = out.stdout + &out.stderr;
            report.contains("Code 503 : 2") && report.contains("Code 504 : 2")
        }),
        "{report}"
    );

    // Retries: forecast v1 fails 30 % of its answers; with retries every page has one.
    d.apply("weather.yaml"); // recommendation fast again
    d.apply("forecast-flaky.yaml");
    d.apply("retries.yaml");
    d.settles(10, "retried forecasts", |v| {
        forecast_ok(v) && v["forecast"]["service"] == "forecast-v1"
    });

    // Mirroring: v1 answers, v2 gets a copy of each call.
    d.apply("weather.yaml"); // forecast v1 healthy again
    d.apply("mirroring.yaml");
    d.settles(3, "v1 answers", |v| {
        v["forecast"]["service"] == "forecast-v1"
    });
    let before = d.served("forecast-v2-0");
    for _ in 0..5 {
        assert_eq!(d.weather(&[])["forecast"]["service"], "forecast-v1");
    }
    assert!(
        eventually(10, || d.served("forecast-v2-0") >= before + 5),
        "v2 saw {} mirrored calls, want 5",
        d.served("forecast-v2-0") - before
    );

    // Outlier ejection: a broken forecast v1 instance is ejected after its first failure.
    d.apply("forecast-broken.yaml");
    d.apply("outlier-ejection.yaml");
    // Once the rule is in and the broken one failed once, every page has its forecast. (The
    // broken instance must have been called: until it is an endpoint, pages are fine for
    // another reason.)
    // A page without its forecast is the broken one's answer (5xx are not retried by
    // default); its own count says so too.
    let mut answers = Vec::new();
    let (mut called, mut reads, mut unread) = (false, 0, 0);
    let ok = eventually(30, || {
        let page_ok = forecast_ok(&d.weather(&[]));
        answers.push(page_ok);
        match d.served_if_up("forecast-v1-broken-0") {
            // Calls besides the earlier reads.
            Some(n) => {
                called = called || n > reads;
                reads += 1;
            }
            None => unread += 1,
        }
        called = called || !page_ok;
        called && answers.len() >= 10 && answers[answers.len() - 10..].iter().all(|ok| *ok)
    });
    assert!(
        ok,
        "still failing after ejection (broken one called: {called}; its count unread \
         {unread} times): {answers:?}"
    );
}

/// `examples/httpbin/`: httpbin, sleep and fortio as the Istio tasks deploy them, and the
/// circuit-breaking task with the fortio-style load client run in the fortio pod.
#[test]
fn httpbin_sleep_and_fortio_for_the_circuit_breaking_task() {
    let mesh = Mesh::tagged("h");
    let dir = format!("{}/../examples/httpbin", env!("CARGO_MANIFEST_DIR"));
    mesh.ok(&["up", &dir, "--no-ingress"]);
    let waypoint = format!(
        "{}/../examples/bookinfo/waypoint.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    mesh.ok(&["apply", "-f", &waypoint]);
    let out = mesh.exec(
        "sleep",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "http://httpbin:8000/get?show_env=1",
        ],
    );
    assert!(
        out.ok && out.stdout.contains("\"show_env\"") && out.stdout.contains("httpbin-v1"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let bin = mesh.bin().to_str().unwrap().to_string();
    let load = |c: &str, n: &str, path: &str| {
        let out = mesh.exec(
            "fortio-deploy",
            &[
                &bin,
                "app",
                "fortio",
                "load",
                "-c",
                c,
                "-qps",
                "0",
                "-n",
                n,
                &format!("http://httpbin:8000{path}"),
            ],
        );
        assert!(out.ok, "{}{}", out.stdout, out.stderr);
        out.stdout
    };
    // One connection at a time stays within the breaker.
    let mut report = String::new();
    assert!(
        eventually(20, || {
            report = load("1", "10", "/get");
            report.contains("Code 200 : 10 (100.0 %)")
        }),
        "{report}"
    );
    // Three at once on requests that take a second: one admitted, one waiting, the third
    // refused straight away.
    assert!(
        eventually(30, || {
            report = load("3", "6", "/delay/1");
            report.contains("Code 200") && report.contains("Code 503")
        }),
        "{report}"
    );
}
