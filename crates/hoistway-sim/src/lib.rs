//! hoistway-sim
