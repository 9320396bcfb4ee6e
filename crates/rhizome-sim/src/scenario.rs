//! The scenario: flags of `rhizome sim`, optionally read from a TOML file with the same fields.

use crate::SimError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one run does. Every field has a default; a TOML file may set any of them, and a flag
/// given on the command line wins over the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Server URL, `ws://host:port/`.
    pub url: String,
    /// Clients that were offline and come back during the storm.
    pub clients: usize,
    /// Actions each of them queued while offline.
    pub actions_per_client: usize,
    /// Fraction (0…1) of the queued actions that are `crdt/counter/inc` operations instead of `inc`.
    pub crdt_share: f64,
    /// The clients reconnect within this window, in ms, as [`Scenario::return_mode`] says
    /// (ignored by [`ReturnMode::Burst`]).
    pub return_within_ms: u64,
    /// How the clients' returns are spread over [`Scenario::return_within_ms`].
    pub return_mode: ReturnMode,
    /// Online clients sending one action every [`crate::PROBE_INTERVAL`] during the storm.
    pub probes: usize,
    /// Directory of the clients' SQLite files (a temporary directory when unset).
    pub data_dir: Option<PathBuf>,
    /// The server's process id, for its peak RSS and CPU time.
    pub pid: Option<u32>,
    /// The server's SQLite log (`rhizome.db`), opened read-only to check every queued id.
    pub server_db: Option<PathBuf>,
    /// Where the JSON result goes.
    pub out: Option<PathBuf>,
    /// Where the SVG chart of the storm goes.
    pub chart: Option<PathBuf>,
    /// Token sent in `connect`.
    pub token: String,
    /// Give up on the storm after this many seconds.
    pub timeout_secs: u64,
    /// CRDT objects the clients share (client `i` writes `sim/shared/<i mod objects>`); 0: one
    /// object per client. With [`Scenario::crdt_share`] > 0 the clients' copies are checked
    /// against the server's objects after the storm (see `converge.rs`).
    pub objects: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            url: "ws://127.0.0.1:31337".into(),
            clients: 100,
            actions_per_client: 100,
            crdt_share: 0.0,
            return_within_ms: 1000,
            return_mode: ReturnMode::Even,
            probes: 0,
            data_dir: None,
            pid: None,
            server_db: None,
            out: None,
            chart: None,
            token: "sim".into(),
            timeout_secs: 600,
            objects: 0,
        }
    }
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SimError::Scenario(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| SimError::Scenario(format!("{}: {e}", path.display())))
    }

    /// Refuses settings that cannot run.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(0.0..=1.0).contains(&self.crdt_share) {
            return Err(SimError::Scenario(format!("crdt_share {} is not within 0…1", self.crdt_share)));
        }
        if self.timeout_secs == 0 {
            return Err(SimError::Scenario("timeout_secs must be at least 1".into()));
        }
        Ok(())
    }

    /// The storm's time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// How the storm's clients return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReturnMode {
    /// All at the storm's start, the same instant (the window is ignored).
    Burst,
    /// Spread evenly over the window: a constant arrival rate.
    Even,
    /// An arrival rate growing linearly from zero over the window: client `i` of `n` at
    /// `window * sqrt(i / n)`.
    Ramp,
}

impl ReturnMode {
    /// Its name in flags, files and reports.
    pub fn name(self) -> &'static str {
        match self {
            ReturnMode::Burst => "burst",
            ReturnMode::Even => "even",
            ReturnMode::Ramp => "ramp",
        }
    }
}

/// Flags of `rhizome sim`; each overrides the same field of `--scenario`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SimArgs {
    /// A TOML scenario file with the fields below (snake_case); flags win over it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Server URL [default: ws://127.0.0.1:31337].
    #[arg(long)]
    pub url: Option<String>,
    /// Clients returning from offline [default: 100].
    #[arg(long)]
    pub clients: Option<usize>,
    /// Actions each client queued while offline [default: 100].
    #[arg(long)]
    pub actions_per_client: Option<usize>,
    /// Fraction (0…1) of queued actions that are `crdt/counter/inc` operations [default: 0].
    #[arg(long)]
    pub crdt_share: Option<f64>,
    /// Clients reconnect within this many ms, as `--return-mode` says [default: 1000].
    #[arg(long)]
    pub return_within_ms: Option<u64>,
    /// How returns are spread: burst (all at once, the window ignored), even (a constant
    /// rate) or ramp (a rate growing linearly over the window) [default: even].
    #[arg(long, value_enum)]
    pub return_mode: Option<ReturnMode>,
    /// Online probe clients measuring latency during the storm [default: 0].
    #[arg(long)]
    pub probes: Option<usize>,
    /// Directory for the clients' SQLite files [default: a temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Server process id, for its peak RSS (VmHWM) and CPU time.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The server's `rhizome.db`, opened read-only afterwards to check every queued id.
    #[arg(long)]
    pub server_db: Option<PathBuf>,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write an SVG chart of the storm here: answers per second and probe latency over time.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Token sent in `connect` [default: sim].
    #[arg(long)]
    pub token: Option<String>,
    /// Give up on the storm after this many seconds [default: 600].
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// CRDT objects the clients share, each written by several clients [default: 0, one per
    /// client].
    #[arg(long)]
    pub objects: Option<usize>,
}

impl SimArgs {
    /// The scenario: the file's (or the defaults), with the flags given applied over it.
    pub fn scenario(&self) -> Result<Scenario, SimError> {
        let mut s = match &self.scenario {
            Some(path) => Scenario::load(path)?,
            None => Scenario::default(),
        };
        if let Some(v) = &self.url {
            s.url = v.clone();
        }
        if let Some(v) = self.clients {
            s.clients = v;
        }
        if let Some(v) = self.actions_per_client {
            s.actions_per_client = v;
        }
        if let Some(v) = self.crdt_share {
            s.crdt_share = v;
        }
        if let Some(v) = self.return_within_ms {
            s.return_within_ms = v;
        }
        if let Some(v) = self.return_mode {
            s.return_mode = v;
        }
        if let Some(v) = self.probes {
            s.probes = v;
        }
        if self.data_dir.is_some() {
            s.data_dir = self.data_dir.clone();
        }
        if self.pid.is_some() {
            s.pid = self.pid;
        }
        if self.server_db.is_some() {
            s.server_db = self.server_db.clone();
        }
        if self.out.is_some() {
            s.out = self.out.clone();
        }
        if self.chart.is_some() {
            s.chart = self.chart.clone();
        }
        if let Some(v) = &self.token {
            s.token = v.clone();
        }
        if let Some(v) = self.timeout_secs {
            s.timeout_secs = v;
        }
        if let Some(v) = self.objects {
            s.objects = v;
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() -> Result<(), SimError> {
        let dir = tempfile::tempdir().map_err(SimError::Io)?;
        let path = dir.path().join("s.toml");
        let text =
            "clients = 7\nactions_per_client = 3\nprobes = 2\nreturn_mode = \"ramp\"\nchart = \"c.svg\"\n";
        std::fs::write(&path, text).map_err(SimError::Io)?;
        let args = SimArgs { scenario: Some(path.clone()), clients: Some(9), ..SimArgs::default() };
        let s = args.scenario()?;
        assert_eq!((s.clients, s.actions_per_client, s.probes, s.return_within_ms), (9, 3, 2, 1000));
        assert_eq!((s.return_mode, s.chart.as_deref()), (ReturnMode::Ramp, Some(Path::new("c.svg"))));
        let args =
            SimArgs { scenario: Some(path), return_mode: Some(ReturnMode::Burst), ..SimArgs::default() };
        assert_eq!(args.scenario()?.return_mode, ReturnMode::Burst);
        assert_eq!(SimArgs::default().scenario()?.return_mode, ReturnMode::Even);
        Ok(())
    }

    #[test]
    fn unknown_fields_and_bad_shares_are_refused() {
        assert!(toml::from_str::<Scenario>("clientz = 1").is_err());
        assert!(toml::from_str::<Scenario>("return_mode = \"trickle\"").is_err());
        let args = SimArgs { crdt_share: Some(1.5), ..SimArgs::default() };
        assert!(args.scenario().is_err());
    }
}
