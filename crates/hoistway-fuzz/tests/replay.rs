//! Every committed corpus input and every past crash of each fuzz target, run through it: the
//! fuzzers' findings stay fixed, without an instrumented build in the test suite.

use std::path::Path;

#[test]
fn every_corpus_input_and_past_crash_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in hoistway_fuzz::TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "crashes"] {
            let dir = fuzz.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                assert_eq!(kind, "crashes", "{} is missing", dir.display());
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name} fails on {}", path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus for {name}");
    }
}
