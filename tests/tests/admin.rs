//! The admin API end to end: `verdant::axum::admin` served on a loopback
//! listener of its own, real fixture libraries behind it, spoken to with
//! hyper's client; answers parsed with serde_json, `/metrics` parsed back
//! line by line.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::path::Path;

use axum::http::StatusCode;
use fixture_api::{FixtureContext, Probe};
use serde_json::Value;
use verdant::axum::AdminToken;
use verdant::Verdant;
use verdant_tests::client::{self, Answer};
use verdant_tests::{fixture, Artifact};

type TestResult = Result<(), Box<dyn StdError>>;

const TOKEN: &str = "0123456789abcdef-admin-test-token";

/// A registry of the given `(name, artifact)` loadables, attached, and its
/// admin API on a loopback port, with the token read from a file.
struct Admin {
    verdant: Verdant,
    addr: SocketAddr,
    _token_dir: tempfile::TempDir,
}

impl Admin {
    async fn start(strict: bool, loadables: &[(&str, &Path)]) -> Result<Admin, Box<dyn StdError>> {
        let mut builder = Verdant::builder(FixtureContext::new()).strict(strict);
        for (name, path) in loadables {
            builder = builder.add::<dyn Probe>(name, *path);
        }
        let verdant = builder.build()?;
        let report = verdant.attach()?;
        assert!(report.is_success(), "{report}");
        Admin::serve(verdant).await
    }

    async fn serve(verdant: Verdant) -> Result<Admin, Box<dyn StdError>> {
        let token_dir = tempfile::tempdir()?;
        let token_file = token_dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let admin = verdant::axum::admin(&verdant, AdminToken::from_file(&token_file)?);
        let addr = client::serve(admin).await;
        Ok(Admin { verdant, addr, _token_dir: token_dir })
    }

    async fn get(&self, path: &str) -> Answer {
        client::get(self.addr, path, &[("authorization", &format!("Bearer {TOKEN}"))]).await
    }

    async fn post(&self, path: &str) -> Answer {
        client::post(self.addr, path, &[("authorization", &format!("Bearer {TOKEN}"))]).await
    }

    fn version(&self, name: &str) -> u32 {
        self.verdant.handle::<dyn Probe>(name).expect("handle").get().expect("serving").version()
    }
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("a number in {line:?}: {e}"));
        assert!(samples.insert(series.to_owned(), value).is_none(), "series {series} appears twice:\n{text}");
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}

/// No token: 401 with a `WWW-Authenticate: Bearer` challenge; another
/// scheme: 401; a wrong token: 403; the right one: 200. Unknown paths are
/// refused the same way before they are 404s, and the answers never echo
/// the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_request_needs_the_token() -> TestResult {
    let artifact = Artifact::new("good-v1");
    let admin = Admin::start(false, &[("probe", artifact.path())]).await?;

    for (method, path) in [("GET", "/status"), ("POST", "/reload"), ("GET", "/metrics"), ("GET", "/nowhere")] {
        let send = |headers: Vec<(&'static str, String)>| {
            let addr = admin.addr;
            let method = method.parse().expect("a method");
            async move {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                client::Connection::open(addr).await.request(method, path, &headers).await
            }
        };
        let none = send(vec![]).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{method} {path}: {}", none.body);
        assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"verdant-admin\""));
        assert_eq!(none.json()["error"], "unauthorized");

        let basic = send(vec![("authorization", "Basic YWRtaW46YWRtaW4=".to_owned())]).await;
        assert_eq!(basic.status, StatusCode::UNAUTHORIZED, "{method} {path}: {}", basic.body);

        let wrong = send(vec![("authorization", format!("Bearer {TOKEN}x"))]).await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{method} {path}: {}", wrong.body);
        assert_eq!(wrong.json()["error"], "forbidden");
        assert!(!wrong.body.contains(TOKEN), "{}", wrong.body);
        let prefix = send(vec![("authorization", format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]))]).await;
        assert_eq!(prefix.status, StatusCode::FORBIDDEN, "a prefix of the token is not the token");

        let right = send(vec![("authorization", format!("Bearer {TOKEN}"))]).await;
        let expected = if path == "/nowhere" { StatusCode::NOT_FOUND } else { StatusCode::OK };
        assert_eq!(right.status, expected, "{method} {path}: {}", right.body);
    }
    Ok(())
}

/// `GET /status` is the JSON of `status()` with the last reload's report:
/// times as epoch seconds, durations in seconds, hashes as hex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_json_with_the_last_reload() -> TestResult {
    let artifact = Artifact::new("good-v1");
    let admin = Admin::start(false, &[("probe", artifact.path())]).await?;
    let answer = admin.get("/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let status = answer.json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["strict"], false);
    assert_eq!(status["revoked"], false);
    let probe = &status["loadables"][0];
    assert_eq!(probe["name"], "probe");
    assert_eq!(probe["path"], artifact.path().display().to_string());
    assert_eq!(probe["current"]["package"], "fixture-good-v1");
    assert_eq!(probe["current"]["package_version"], "0.1.0");
    assert_eq!(probe["current"]["generation"], 1);
    let hash = probe["current"]["hash"].as_str().expect("a hex string");
    assert!(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    let loaded_at = probe["current"]["loaded_at"].as_f64().expect("epoch seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    assert!(loaded_at > 1.6e9 && loaded_at <= now, "{loaded_at}");
    assert_eq!(probe["failure"], Value::Null);
    assert_eq!(probe["retired"], Value::Array(Vec::new()));
    assert!(status["sigpipe"]["listening"].is_boolean());

    let last = &status["last_reload"];
    assert_eq!(last["trigger"]["kind"], "attach");
    assert_eq!(last["success"], true);
    assert_eq!(last["error"], Value::Null);
    let report = &last["report"];
    assert_eq!(report["generation"], 1);
    assert_eq!(report["success"], true);
    assert!(report["duration"].is_f64());
    let loaded = &report["loadables"][0];
    assert_eq!((&loaded["name"], &loaded["outcome"]["outcome"]), (&Value::from("probe"), &Value::from("swapped")));
    assert_eq!(loaded["outcome"]["old"], Value::Null);
    assert_eq!(loaded["outcome"]["new"]["package_version"], "0.1.0");
    let steps: Vec<&str> =
        loaded["steps"].as_array().expect("steps").iter().map(|s| s["step"].as_str().expect("a step name")).collect();
    assert_eq!(steps, ["read", "validate", "copy", "open", "check", "attach", "swap"]);
    assert!(loaded["steps"][0]["duration"].is_f64());
    Ok(())
}

/// `POST /reload?filter=` takes a name, a glob or a `re:` regex and reloads
/// only what it selects; the answer is the report as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_filter_reloads_only_what_it_selects() -> TestResult {
    let (a, b, c) = (Artifact::new("good-v1"), Artifact::new("good-v1"), Artifact::new("good-v1"));
    let admin = Admin::start(false, &[("cart", a.path()), ("shop-a", b.path()), ("shop-b", c.path())]).await?;
    for artifact in [&a, &b, &c] {
        artifact.install("good-v2");
    }

    let reloaded = |answer: &Answer| -> Vec<(String, String)> {
        answer.json()["report"]["loadables"]
            .as_array()
            .expect("loadables")
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap_or("?").to_owned(),
                    l["outcome"]["outcome"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    };
    let by_name = admin.post("/reload?filter=shop-a").await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.body);
    assert_eq!(by_name.json()["success"], true);
    assert_eq!(by_name.json()["failures"], Value::Array(Vec::new()));
    assert_eq!(reloaded(&by_name), [("shop-a".to_owned(), "swapped".to_owned())]);
    assert_eq!((admin.version("cart"), admin.version("shop-a"), admin.version("shop-b")), (1, 2, 1));

    let by_glob = admin.post("/reload?filter=shop-*").await;
    assert_eq!(by_glob.status, StatusCode::OK, "{}", by_glob.body);
    let expected = [("shop-a".to_owned(), "unchanged".to_owned()), ("shop-b".to_owned(), "swapped".to_owned())];
    assert_eq!(reloaded(&by_glob), expected);
    assert_eq!(admin.version("cart"), 1, "the glob does not select cart");

    let by_regex = admin.post("/reload?filter=re:%5Ec(a%7Cx)rt%24").await; // re:^c(a|x)rt$
    assert_eq!(by_regex.status, StatusCode::OK, "{}", by_regex.body);
    assert_eq!(reloaded(&by_regex), [("cart".to_owned(), "swapped".to_owned())]);
    assert_eq!(admin.version("cart"), 2);

    let everything = admin.post("/reload").await;
    assert_eq!(everything.status, StatusCode::OK);
    assert_eq!(reloaded(&everything).len(), 3);

    let bad_regex = admin.post("/reload?filter=re:(").await;
    assert_eq!(bad_regex.status, StatusCode::BAD_REQUEST, "{}", bad_regex.body);
    assert_eq!(bad_regex.json()["error"]["kind"], "invalid_filter");

    // Outside strict mode a filter that selects nothing is no error.
    let nothing = admin.post("/reload?filter=payment").await;
    assert_eq!(nothing.status, StatusCode::OK, "{}", nothing.body);
    assert!(nothing.json()["warning"].as_str().is_some_and(|w| w.contains("selects no loadable")), "{}", nothing.body);
    Ok(())
}

/// In strict mode, a filter that matches nothing is a 404 naming what is
/// registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_strict_mode_a_filter_that_matches_nothing_is_404() -> TestResult {
    let artifact = Artifact::new("good-v1");
    let admin = Admin::start(true, &[("probe", artifact.path())]).await?;
    let answer = admin.post("/reload?filter=shop").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    let error = &answer.json()["error"];
    assert_eq!(error["kind"], "no_match");
    assert_eq!(error["filter"], "shop");
    assert_eq!(error["registered"], serde_json::json!(["probe"]));
    Ok(())
}

/// A reload in which a loadable fails answers 500 with the loadable, the
/// step and the cause, in both modes, and the others are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_loadable_is_500_naming_it_and_its_step() -> TestResult {
    for strict in [false, true] {
        let (good, bad) = (Artifact::new("good-v1"), Artifact::new("good-v1"));
        let admin = Admin::start(strict, &[("good", good.path()), ("bad", bad.path())]).await?;
        good.install("good-v2");
        bad.install("attach-error");
        let answer = admin.post("/reload").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "strict {strict}: {}", answer.body);
        let json = answer.json();
        assert_eq!(json["success"], false);
        let failures = json["failures"].as_array().expect("failures");
        assert_eq!(failures.len(), 1, "{json}");
        assert_eq!(failures[0]["loadable"], "bad");
        assert_eq!(failures[0]["step"], "attach");
        assert_eq!(failures[0]["error"], "attach_failed");
        assert!(failures[0]["cause"].as_str().is_some_and(|c| c.contains("no database")), "{json}");
        let loadables = json["report"]["loadables"].as_array().expect("loadables");
        assert_eq!(loadables[0]["outcome"]["outcome"], "swapped", "the good one was applied: {json}");
        assert_eq!(loadables[1]["outcome"]["outcome"], "failed");
        assert_eq!(loadables[1]["serving"]["package_version"], "0.1.0", "the bad one keeps what it had");
        assert_eq!((admin.version("good"), admin.version("bad")), (2, 1));

        let status = admin.get("/status").await.json();
        assert_eq!(status["last_reload"]["success"], false);
        assert_eq!(status["last_reload"]["trigger"]["kind"], "call");
        let bad = &status["loadables"][1];
        assert_eq!(bad["failure"]["own"], true);
        assert_eq!(bad["failure"]["error"]["step"], "attach");
        assert_eq!(bad["failure"]["generation"], 2);
    }
    Ok(())
}

/// A manifest that does not validate: 422 with its file, line and column;
/// nothing changed; it counts as a failed reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_is_422_with_file_line_and_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("verdant.toml");
    let entry = format!("[[loadable]]\nname = \"a\"\npath = {:?}\nmount = \"/a\"\n", fixture("ext-v1"));
    std::fs::write(&manifest, &entry)?;
    let verdant = Verdant::builder(()).manifest(&manifest).build()?;
    verdant.attach()?;
    let admin = Admin::serve(verdant).await?;

    std::fs::write(&manifest, format!("{entry}mount = \"/b\"\n"))?;
    let answer = admin.post("/reload").await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["success"], false);
    let error = &json["error"];
    assert_eq!(error["kind"], "manifest");
    assert_eq!(error["manifest"]["file"], manifest.display().to_string());
    assert_eq!(
        (error["manifest"]["line"].as_u64(), error["manifest"]["column"].as_u64()),
        (Some(5), Some(1)),
        "{json}"
    );
    assert!(error["message"].as_str().is_some_and(|m| m.contains("nothing was changed")), "{json}");

    let status = admin.get("/status").await.json();
    assert_eq!(status["generation"], 1, "no transaction ran");
    assert_eq!(status["last_reload"]["success"], false);
    assert_eq!(status["last_reload"]["report"], Value::Null);
    assert_eq!(status["last_reload"]["error"]["kind"], "manifest");
    let metrics = samples(&admin.get("/metrics").await.body);
    assert_eq!(sample(&metrics, r#"verdant_reloads_total{result="failure"}"#), 1.0);
    assert_eq!(sample(&metrics, "verdant_last_reload_successful"), 0.0);
    Ok(())
}

/// `/metrics` after one good and one failed reload, parsed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_good_and_a_failed_reload() -> TestResult {
    let artifact = Artifact::new("good-v1");
    let admin = Admin::start(false, &[("probe", artifact.path())]).await?;
    let before = samples(&admin.get("/metrics").await.body);
    assert_eq!(sample(&before, r#"verdant_reloads_total{result="success"}"#), 1.0, "the attach");
    assert_eq!(sample(&before, r#"verdant_reloads_total{result="failure"}"#), 0.0);
    assert_eq!(sample(&before, "verdant_last_reload_successful"), 1.0);
    assert_eq!(sample(&before, "verdant_retired_versions"), 0.0);

    artifact.install("good-v2");
    assert_eq!(admin.post("/reload").await.status, StatusCode::OK);
    let good = samples(&admin.get("/metrics").await.body);
    let success_at = sample(&good, "verdant_last_reload_success_timestamp_seconds");
    assert!(success_at > 1.6e9, "{success_at}");

    artifact.install("attach-error");
    assert_eq!(admin.post("/reload").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    let answer = admin.get("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    println!("GET /metrics after one good and one failed reload:\n{}", answer.body);
    let metrics = samples(&answer.body);
    assert_eq!(sample(&metrics, r#"verdant_reloads_total{result="success"}"#), 2.0, "the attach and the good reload");
    assert_eq!(sample(&metrics, r#"verdant_reloads_total{result="failure"}"#), 1.0);
    assert_eq!(sample(&metrics, "verdant_last_reload_successful"), 0.0);
    assert_eq!(
        sample(&metrics, "verdant_last_reload_success_timestamp_seconds"),
        success_at,
        "the failure does not move the time of the last success"
    );
    assert_eq!(sample(&metrics, "verdant_generation"), 3.0);
    assert_eq!(sample(&metrics, "verdant_reload_duration_seconds_count"), 3.0);
    assert!(sample(&metrics, "verdant_reload_duration_seconds_sum") > 0.0);
    assert_eq!(sample(&metrics, r#"verdant_reload_duration_seconds_bucket{le="+Inf"}"#), 3.0);
    // v1, replaced, and the attach-error build, whose attach failed after
    // it was mapped, no longer serve but stay mapped.
    assert!(sample(&metrics, "verdant_retired_versions") >= 1.0, "{}", answer.body);
    assert!(sample(&metrics, "verdant_retired_mapped_bytes") > 0.0);
    assert_eq!(sample(&metrics, "verdant_sigpipe_ignored_total"), 0.0);
    assert!(answer.body.contains("# TYPE verdant_reload_duration_seconds histogram\n"), "{}", answer.body);
    assert!(answer.body.contains("# TYPE verdant_reloads_total counter\n"), "{}", answer.body);
    assert_eq!(admin.verdant.metrics_text().lines().count(), answer.body.lines().count());
    Ok(())
}

/// Library panics that the HTTP pipeline contains are counted per
/// loadable, and a version retired while a request still runs on it shows
/// that request in `verdant_requests_in_flight`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contained_panics_and_requests_in_flight_are_in_the_metrics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("verdant.toml");
    let artifact = Artifact::new("ext-v1");
    let entry = format!("[[loadable]]\nname = \"stamp\"\npath = {:?}\nmount = \"/stamp\"\n", artifact.path());
    std::fs::write(&manifest, &entry)?;
    let verdant = Verdant::builder(()).manifest(&manifest).build()?;
    verdant.attach()?;
    let service = client::serve(axum::Router::new().fallback_service(verdant::axum::pipeline(&verdant))).await;
    let admin = Admin::serve(verdant).await?;

    for _ in 0..2 {
        let panicked = client::get(service, "/stamp/hello", &[("x-panic-in", "stamp")]).await;
        assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    // A stream started on v1 goes on while v2 is swapped in.
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = gate.local_addr()?.port();
    let mut streaming = client::Connection::open(service).await;
    let response = streaming.start(&format!("/stamp/stream?chunks=2&gate={port}"), &[]).await;
    let (gate_line, _) = client::guard("the library connecting to the gate", gate.accept()).await?;
    let mut body = response.into_body();
    assert!(client::next_chunk(&mut body).await.is_some());
    artifact.install("ext-v2");
    assert_eq!(admin.post("/reload").await.status, StatusCode::OK);

    let metrics = samples(&admin.get("/metrics").await.body);
    assert_eq!(sample(&metrics, r#"verdant_library_panics_total{loadable="stamp"}"#), 2.0);
    assert_eq!(
        sample(&metrics, r#"verdant_requests_in_flight{loadable="stamp",version="0.1.0",generation="1"}"#),
        1.0,
        "{metrics:#?}"
    );
    drop(gate_line);
    while client::next_chunk(&mut body).await.is_some() {}
    drop(body);
    let verdant = admin.verdant.clone();
    let drained = tokio::task::spawn_blocking(move || {
        verdant_tests::eventually(|| !verdant.metrics_text().contains("verdant_requests_in_flight{"))
    })
    .await?;
    assert!(drained, "the retired version leaves the gauge once its stream ended:\n{}", admin.verdant.metrics_text());
    Ok(())
}
