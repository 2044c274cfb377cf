//! The bookinfo walkthrough as users follow it (docs/GATEWAY.md, "Bookinfo"): the bundled
//! bookinfo on `keelson up`, exposed by `examples/bookinfo/bookinfo-gateway.yaml`, the page
//! read from the machine at `$GATEWAY_URL`, and every routing file of `examples/bookinfo/`
//! applied in turn with the page it should produce checked: which reviews version answered
//! (stars: none, black, red), for whom (signed in as jason or not), and the faults.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

fn example(path: &str) -> String {
    format!("{}/../examples/bookinfo/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Which reviews version a page shows, by its stars (the footer names it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stars {
    None,
    Black,
    Red,
    /// Reviews were unavailable.
    NoReviews,
    /// The ratings behind reviews were unavailable.
    NoRatings,
}

fn stars(page: &str) -> Stars {
    if page.contains("Sorry, product reviews are currently unavailable") {
        Stars::NoReviews
    } else if page.contains("Ratings service is currently unavailable") {
        Stars::NoRatings
    } else if page.contains("style=\"color: black\"") {
        assert!(page.contains("reviews-v2"), "{page}");
        Stars::Black
    } else if page.contains("style=\"color: red\"") {
        assert!(page.contains("reviews-v3"), "{page}");
        Stars::Red
    } else {
        assert!(page.contains("reviews-v1"), "{page}");
        Stars::None
    }
}

struct Walkthrough {
    mesh: Mesh,
    url: String,
}

impl Walkthrough {
    fn apply(&self, file: &str) {
        self.mesh.ok(&["apply", "-f", &example(file)]);
    }

    /// The product page, as a visitor (`None`) or a signed-in user.
    fn page(&self, user: Option<&str>) -> String {
        let cookie = user.map(|u| format!("session={u}"));
        let mut args = vec![];
        if let Some(c) = &cookie {
            args.extend(["-b", c.as_str()]);
        }
        let url = format!("{}/productpage", self.url);
        args.push(&url);
        let (status, out) = self.mesh.curl_host(&args);
        assert_eq!(status, 200, "{out}");
        out
    }

    /// Polls until `n` pages in a row for `user` all show `want`.
    fn settles(&self, user: Option<&str>, want: Stars, n: usize) {
        let mut last = String::new();
        let ok = eventually(20, || {
            (0..n).all(|_| {
                last = self.page(user);
                stars(&last) == want
            })
        });
        assert!(ok, "wanted {want:?} for {user:?}; last page:\n{last}");
    }
}

#[test]
fn the_bookinfo_walkthrough_through_the_ingress_gateway() {
    let mesh = Mesh::tagged("w");
    mesh.ok(&["up"]);
    let url = format!("http://{}:80", mesh.host_ip("istio-ingressgateway-0"));
    let w = Walkthrough { mesh, url };
    w.apply("bookinfo-gateway.yaml");

    // The page users know: its title, the details table, reviews; all three versions of
    // reviews answer in turn without routing.
    let page = w.mesh.curl_host_until(
        &[&format!("{}/productpage", w.url)],
        200,
        "<title>Simple Bookstore App</title>",
    );
    assert!(
        page.contains("<b>Type:</b></td><td>paperback")
            && page.contains("William Shakespeare")
            && page.contains("Reviewer1")
            && page.contains("Sign in"),
        "{page}"
    );
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        eventually(30, || {
            seen.insert(format!("{:?}", stars(&w.page(None))));
            seen.len() == 3
        }),
        "versions seen: {seen:?}"
    );
    // Beside the page: the API, the health check, the stylesheet, sign-in.
    for (path, expect) in [
        ("/api/v1/products", "The Comedy of Errors"),
        ("/api/v1/products/0", "William Shakespeare"),
        ("/api/v1/products/0/reviews", "Reviewer2"),
        ("/api/v1/products/0/ratings", "Reviewer1"),
        ("/productpage?u=normal", "Simple Bookstore App"),
        ("/static/style.css", "font-family"),
    ] {
        w.mesh
            .curl_host_until(&[&format!("{}{path}", w.url)], 200, expect);
    }
    let (_, health) = w.mesh.curl_host(&[&format!("{}/health", w.url)]);
    assert!(
        health.contains("404"),
        "/health is not exposed by the gateway: {health}"
    );
    let (status, login) = w.mesh.curl_host(&[
        "-d",
        "username=jason&passwd=secret",
        &format!("{}/login", w.url),
    ]);
    assert_eq!(status, 302, "{login}");
    assert!(
        login
            .to_ascii_lowercase()
            .contains("set-cookie: session=jason"),
        "{login}"
    );
    let (status, logout) = w
        .mesh
        .curl_host(&["-X", "POST", &format!("{}/logout", w.url)]);
    assert_eq!(status, 302, "{logout}");
    assert!(logout.contains("Max-Age=0"), "{logout}");

    // Routing happens at the namespace's waypoint; the versions' subsets and Services.
    w.apply("waypoint.yaml");
    w.apply("bookinfo-versions.yaml");

    w.apply("virtual-service-all-v1.yaml");
    w.settles(None, Stars::None, 8);

    w.apply("virtual-service-reviews-test-v2.yaml");
    w.settles(Some("jason"), Stars::Black, 5);
    assert!(w
        .page(Some("jason"))
        .contains("signed in as <b class=\"user\">jason</b>"));
    w.settles(None, Stars::None, 5);

    w.apply("virtual-service-ratings-test-abort.yaml");
    w.settles(Some("jason"), Stars::NoRatings, 2);
    w.settles(None, Stars::None, 3);

    // The 7 s delay outlasts what the page waits for reviews (2 × 3 s).
    w.apply("virtual-service-ratings-test-delay.yaml");
    let started = std::time::Instant::now();
    w.settles(Some("jason"), Stars::NoReviews, 1);
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    w.settles(None, Stars::None, 2);

    w.apply("virtual-service-reviews-50-v3.yaml");
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        eventually(30, || {
            let s = stars(&w.page(None));
            assert!(
                matches!(s, Stars::None | Stars::Red),
                "{s:?} with reviews 50/50 v1/v3"
            );
            seen.insert(format!("{s:?}"));
            seen.len() == 2
        }),
        "{seen:?}"
    );

    w.apply("virtual-service-reviews-v3.yaml");
    w.settles(None, Stars::Red, 5);

    // The Gateway API flavour of the same routing: an HTTPRoute on the reviews Service
    // takes over from the VirtualService (routes first at a waypoint).
    w.apply("gateway-api/route-reviews-v1.yaml");
    w.settles(None, Stars::None, 5);
    w.apply("gateway-api/route-reviews-90-10.yaml");
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        eventually(40, || {
            let s = stars(&w.page(None));
            assert!(
                matches!(s, Stars::None | Stars::Black),
                "{s:?} with reviews 90/10 v1/v2"
            );
            seen.insert(format!("{s:?}"));
            seen.len() == 2
        }),
        "{seen:?}"
    );
}
