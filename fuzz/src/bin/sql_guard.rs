fn main() {
    // No abort-on-panic hook: the query engine turns a panic inside DataFusion's planner into
    // a refusal, so only a panic that escapes it is a crash.
    afl::fuzz_nohook!(|data: &[u8]| hoistway_fuzz::sql_guard(data));
}
