//! The HTTP path: one `GET /shop/hello` through Verdant's pipeline into the
//! demo's real shop library, against the same router compiled into the
//! host (the same source file, `shop-lib/src/shop.rs`), in one process and
//! one run, with no network in between: the ratio is what Verdant adds per
//! request. `scripts/loadtest http-path` measures the same over loopback.
//!
//! Run with `scripts/bench http_path` (it builds the release libraries
//! first). Read the results as ratios to `static_router`.
//!
//! - `static_router`: the shop's router nested at `/shop`, behind the
//!   demo's host layer (a `map_response` stamp).
//! - `verdant_pipeline`: `verdant::axum::pipeline` with the shop mounted at
//!   `/shop` (`library_routes`: the library's router called directly),
//!   behind the same layer: what the demo serves.
//! - `verdant_pipeline_routes`: the same through `Pipeline::routes`, the
//!   general path (the library's router routed again as an `axum::Router`).
//! - `verdant_mount`: `verdant::axum::mount`, the older per-loadable way.
//! - `raw_dlopen`: the same router in a plain `cdylib` (the `raw-shop`
//!   fixture, the same source file again) called through one function
//!   pointer, nested at `/shop` behind the same layer, with nothing of
//!   Verdant's on the path: no guard, no pin, no wrapped body. What serving
//!   a router from a separately linked library costs by itself, the floor
//!   under `verdant_pipeline`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::response::Response;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::BodyExt;
use shop_api::{Shop, ShopContext};
use verdant::Verdant;
use verdant_loadable::Loadable;

// The library's code compiled into this benchmark: the static baseline.
#[path = "../../shop-lib/src/shop.rs"]
#[allow(dead_code)]
mod shop;

/// Counts allocations (the library's too: it allocates through the host's
/// global allocator), so the benchmark can print allocations per request, a
/// figure the machine's noise cannot move. Counts only while `COUNT` is set:
/// the timed runs pay one relaxed load per allocation, not an atomic
/// increment, which would tax every allocation that reaches it (all of the
/// static router's and Verdant's, none of the raw fixture's, whose library
/// allocates with its own `std`).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicBool = AtomicBool::new(false);

fn count_allocation() {
    if COUNT.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

async fn stamp(mut response: Response) -> Response {
    response.headers_mut().insert("x-verdant-generation", HeaderValue::from(1u64));
    response
}

fn context() -> ShopContext {
    ShopContext { shop_name: "the Verdant demo shop".to_owned(), currency: "EUR".to_owned() }
}

/// One request through `app`, body collected; returns the body length.
async fn serve(app: &Router) -> usize {
    let request = Request::get("/shop/hello").body(Body::empty()).expect("a valid request");
    let response = tower::ServiceExt::oneshot(app.clone(), request).await.expect("infallible");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("a complete body").to_bytes().len()
}

fn http_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let _entered = runtime.enter();
    let library = verdant_tests::artifact_dir().join("libshop_lib.so");
    assert!(library.is_file(), "{} is missing: run scripts/bench (it builds the release libraries)", library.display());

    let shop = shop::ShopV1::attach(&context()).expect("attach the static shop");
    let static_app = Router::new()
        .nest_service("/shop", <shop::ShopV1 as Shop>::router(&shop))
        .layer(axum::middleware::map_response(stamp));

    let verdant = Verdant::builder(context())
        .add::<dyn Shop>("shop", &library)
        .mount("shop", "/shop")
        .build()
        .expect("a registry");
    verdant.attach().expect("attach the shop library");
    let pipeline = verdant::axum::pipeline(&verdant).library_routes::<dyn Shop>(|shop| shop.router());
    let pipeline_app = Router::new().fallback_service(pipeline).layer(axum::middleware::map_response(stamp));
    let routes = verdant::axum::pipeline(&verdant).routes::<dyn Shop>(|shop| shop.router());
    let routes_app = Router::new().fallback_service(routes).layer(axum::middleware::map_response(stamp));
    let handle = verdant.handle::<dyn Shop>("shop").expect("a handle");
    let mount_app =
        verdant::axum::mount(handle, |shop| shop.router()).expect("mount").layer(axum::middleware::map_response(stamp));

    let raw_app = raw_dlopen_app();

    let expected = runtime.block_on(serve(&static_app));
    assert_eq!(runtime.block_on(serve(&raw_app)), expected, "the same answer from the raw library");
    assert_eq!(runtime.block_on(serve(&pipeline_app)), expected, "the same answer both ways");
    assert_eq!(runtime.block_on(serve(&routes_app)), expected, "the same answer through Pipeline::routes");
    let apps = [
        ("static_router", &static_app),
        ("verdant_pipeline", &pipeline_app),
        ("verdant_pipeline_routes", &routes_app),
        ("verdant_mount", &mount_app),
        ("raw_dlopen", &raw_app),
    ];

    // `HTTP_PATH_ONLY=NAME:N`: serve N requests through the app NAME, then
    // exit without criterion. A fixed workload for an instruction count,
    // which the machine's noise cannot move: run it under `valgrind
    // --tool=callgrind` with two values of N, and the difference divided
    // by the difference of N is the instructions per request.
    if let Ok(only) = std::env::var("HTTP_PATH_ONLY") {
        let (name, count) = only.split_once(':').expect("HTTP_PATH_ONLY=NAME:N");
        let count: u64 = count.parse().expect("HTTP_PATH_ONLY=NAME:N, N a number");
        let (_, app) = apps.iter().find(|(known, _)| *known == name).expect("HTTP_PATH_ONLY names an app");
        let app = Router::clone(app);
        runtime
            .block_on(tokio::spawn(async move {
                for _ in 0..count {
                    std::hint::black_box(serve(&app).await);
                }
            }))
            .expect("the fixed workload");
        std::process::exit(0);
    }

    for (name, app) in apps {
        let app = app.clone();
        let per_request = runtime
            .block_on(tokio::spawn(async move {
                serve(&app).await;
                COUNT.store(true, Ordering::Relaxed);
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                for _ in 0..1000 {
                    serve(&app).await;
                }
                let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0;
                COUNT.store(false, Ordering::Relaxed);
                per_request
            }))
            .expect("the counting task");
        // The raw fixture's library allocates with its own `std`, uncounted.
        let whose = if name == "raw_dlopen" { " (host side only)" } else { "" };
        println!("http_path/{name}: {per_request:.1} allocations per request{whose}");
    }

    // Requests run inside a tokio task, as a server's connection tasks run
    // them (a library enters the runtime once per worker thread there, and
    // would enter it per call outside a task).
    let mut group = c.benchmark_group("http_path");
    group.measurement_time(Duration::from_secs(4));
    for (name, app) in [
        ("static_router", &static_app),
        ("verdant_pipeline", &pipeline_app),
        ("verdant_pipeline_routes", &routes_app),
        ("verdant_mount", &mount_app),
        ("raw_dlopen", &raw_app),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let app = app.clone();
                runtime
                    .block_on(tokio::spawn(async move {
                        let started = Instant::now();
                        for _ in 0..iterations {
                            std::hint::black_box(serve(&app).await);
                        }
                        started.elapsed()
                    }))
                    .expect("the benchmark task")
            })
        });
    }
    group.finish();
}

/// The `raw-shop` fixture's router behind the same nesting and layer as the
/// static router, called through the fixture's one entry point.
fn raw_dlopen_app() -> Router {
    type Call = fn(Request<Body>) -> Pin<Box<dyn Future<Output = Response> + Send>>;
    let path = verdant_tests::artifact_dir().join("libfixture_raw_shop.so");
    assert!(path.is_file(), "{} is missing: run scripts/bench (it builds the release libraries)", path.display());
    // SAFETY: the fixture runs no initialisers of its own, and it was built
    // from this workspace by the same compiler with the same feature set
    // (the workspace-hack), so the Rust types of `Call` have the same layout
    // on both sides (see the fixture's docs: a
    // measurement of the floor, not a way to load libraries). The library is
    // leaked: the function pointer is used until the process exits.
    let call: Call = unsafe {
        let library = Box::leak(Box::new(libloading::Library::new(&path).expect("load the raw-shop fixture")));
        *library.get::<Call>(b"fixture_raw_shop_call\0").expect("the raw-shop fixture's entry point")
    };
    let service = tower::service_fn(move |request: Request<Body>| {
        let response = call(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    Router::new().nest_service("/shop", service).layer(axum::middleware::map_response(stamp))
}

criterion_group!(benches, http_path);
criterion_main!(benches);
