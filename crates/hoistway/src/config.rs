//! Configuration: defaults, then an optional TOML file, then `HOISTWAY_*` environment variables
//! (nested keys joined by `__`, e.g. `HOISTWAY_INGEST__AUTO_REGISTER=true`), then flags.
//! `config/hoistway.example.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: u32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub processor: ProcessorSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
    pub max_readings_per_request: usize,
    /// Register a lift on its first reading instead of dead-lettering its readings.
    pub auto_register: bool,
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub segment_bytes: u64,
    /// Ingest answers 503 once the log (everything not yet checkpointed) is this large.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorSettings {
    pub checkpoint_interval_secs: u64,
    pub silent_after_secs: u64,
    pub dedup_window_seqs: u64,
    pub dedup_max_gaps: usize,
    pub dedup_max_epochs: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            data_dir: PathBuf::from("hoistway-data"),
            listen: "127.0.0.1:8080".parse().unwrap(),
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            processor: ProcessorSettings::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_decoded_bytes: 16 << 20,
            max_readings_per_request: 10_000,
            auto_register: false,
            retry_after_secs: 5,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 2 << 30,
        }
    }
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        let w = hoistway_model::DedupWindow::default();
        Self {
            checkpoint_interval_secs: 10,
            silent_after_secs: 60,
            dedup_window_seqs: w.seqs,
            dedup_max_gaps: w.max_ranges,
            dedup_max_epochs: w.max_epochs,
        }
    }
}

impl Config {
    /// Defaults ← `file` (if any) ← environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file(path));
        }
        let config: Config = fig
            .merge(Env::prefixed("HOISTWAY_").split("__").ignore(&[
                "config",
                "log_level",
                "log_format",
            ]))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        anyhow::ensure!(
            config.version == CONFIG_VERSION,
            "config version {} is not supported (this build reads version {CONFIG_VERSION})",
            config.version
        );
        Ok(config)
    }

    pub fn window(&self) -> hoistway_model::DedupWindow {
        hoistway_model::DedupWindow {
            seqs: self.processor.dedup_window_seqs,
            max_ranges: self.processor.dedup_max_gaps,
            max_epochs: self.processor.dedup_max_epochs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/hoistway.example.toml"
        );
        let parsed: Config = Figment::from(Toml::file(example)).extract().unwrap();
        assert_eq!(parsed, Config::default());
    }
}
