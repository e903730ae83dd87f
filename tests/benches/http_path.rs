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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
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
/// figure the machine's noise cannot move.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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

    let expected = runtime.block_on(serve(&static_app));
    assert_eq!(runtime.block_on(serve(&pipeline_app)), expected, "the same answer both ways");
    assert_eq!(runtime.block_on(serve(&routes_app)), expected, "the same answer through Pipeline::routes");
    for (name, app) in [
        ("static_router", &static_app),
        ("verdant_pipeline", &pipeline_app),
        ("verdant_pipeline_routes", &routes_app),
        ("verdant_mount", &mount_app),
    ] {
        let app = app.clone();
        let per_request = runtime
            .block_on(tokio::spawn(async move {
                serve(&app).await;
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                for _ in 0..1000 {
                    serve(&app).await;
                }
                (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0
            }))
            .expect("the counting task");
        println!("http_path/{name}: {per_request:.1} allocations per request");
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

criterion_group!(benches, http_path);
criterion_main!(benches);
