fn main() {
    afl::fuzz!(|data: &[u8]| hoistway_fuzz::log_segment(data));
}
