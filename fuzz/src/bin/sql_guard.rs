fn main() {
    afl::fuzz!(|data: &[u8]| hoistway_fuzz::sql_guard(data));
}
