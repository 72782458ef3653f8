//! hoistway-server
