use fixture_api::{FixtureContext, Probe};
use verdant::Verdant;
use verdant_tests::Artifact;

#[test]
fn attach_call_reload() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let report = verdant.attach().unwrap();
    println!("{report}");
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert_eq!(probe.get().unwrap().version(), 1);
    artifact.install("good-v2");
    let report = verdant.reload_blocking(Some("probe")).unwrap();
    println!("{report}");
    assert_eq!(probe.get().unwrap().version(), 2);
    let caught = std::panic::catch_unwind(|| probe.get().unwrap().explode("kaboom")).unwrap_err();
    let p = caught.downcast_ref::<verdant::boundary::LibraryPanic>().unwrap();
    assert_eq!(p.0.message(), "kaboom");
    println!("{}", verdant.status());
}
