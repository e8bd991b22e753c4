//! The configuration: one TOML file, every setting overridable by environment variable
//! (`MPCONNECT__LISTEN__INGEST=0.0.0.0:8080`; entries of `sources`, `destinations` and
//! `connections` are picked by id: `MPCONNECT__DESTINATIONS__MP__RETRY_QUEUE=…`), and every
//! secret given inline, as `{ env = "VAR" }`, or as `{ file = "path" }`.
//!
//! Unknown keys are errors, and [`Config::problems`] lists every problem at once, each with its
//! path in the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use delivery::DestinationConfig;
use ingest::SourceConfig;
use runtime::config::Problems;
use serde::Deserialize;
use transform::Connection;

pub use runtime::SecretConfig;

/// The default config of `mpconnect all`, shipped in the repository and in the binary.
pub const LOCAL_DEFAULT: &str = include_str!("../../../examples/local.toml");

/// Room between a destination's attempt and the transform's deadline for delivery's answer:
/// parking a batch after a failed attempt takes a moment too.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Environment variables that override settings start with this.
const ENV_PREFIX: &str = "MPCONNECT__";

#[derive(Debug, Deserialize)]
pub struct Config {
    /// The embedded queue, local object store, file destinations and generated secrets.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub queues: Queues,
    #[serde(default)]
    pub store: Store,
    #[serde(default)]
    pub aws: Aws,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    #[serde(default)]
    pub connections: Vec<Connection>,
    #[serde(default)]
    pub transform: TransformConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub telemetry: Telemetry,
    #[serde(default)]
    pub shutdown: Shutdown,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("mpconnect-data")
}

#[derive(Debug, Clone, Deserialize)]
pub struct Listen {
    /// The Events API, webhook, health and metrics of ingest.
    #[serde(default = "default_ingest_addr")]
    pub ingest: String,
    /// Delivery's gRPC server (the transform dials it).
    #[serde(default = "default_delivery_addr")]
    pub delivery: String,
    /// Health and metrics of the transform and of delivery (one port each when separate; in
    /// `all`, ingest's port serves them).
    #[serde(default = "default_transform_admin")]
    pub transform_admin: String,
    #[serde(default = "default_delivery_admin")]
    pub delivery_admin: String,
}

fn default_ingest_addr() -> String {
    "127.0.0.1:8080".into()
}
fn default_delivery_addr() -> String {
    "127.0.0.1:50051".into()
}
fn default_transform_admin() -> String {
    "127.0.0.1:9091".into()
}
fn default_delivery_admin() -> String {
    "127.0.0.1:9092".into()
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            ingest: default_ingest_addr(),
            delivery: default_delivery_addr(),
            transform_admin: default_transform_admin(),
            delivery_admin: default_delivery_admin(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Queues {
    /// `embedded` (SQLite in the data directory) or `sqs`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// The ingest queue: a name (embedded) or an SQS URL or name.
    #[serde(default = "default_ingest_queue")]
    pub ingest: String,
    /// Where refused input goes.
    #[serde(default = "default_ingest_dlq")]
    pub ingest_dead_letter: String,
    /// SQS: dead-letter a message after this many receives.
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// SQS: the largest message (256 KiB on LocalStack; SQS takes 1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Answer 429 past this backlog (messages) on the ingest queue; 0 for no bound.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: u64,
    /// Embedded: `normal` survives a crash or `kill -9` of the process, and a power loss may
    /// lose the last moments' commits; `full` waits for the disk on every commit, so a 202
    /// survives a power loss too, at a large cost in speed.
    #[serde(default = "default_sync")]
    pub sync: String,
    /// Embedded: the most the queue database may take on disk, in bytes; past it, ingest
    /// answers 503 (senders retry) instead of the process failing on a full disk. 0: no cap
    /// but the disk's.
    #[serde(default)]
    pub max_disk_bytes: u64,
}

fn default_sync() -> String {
    "normal".into()
}

fn default_backend() -> String {
    "embedded".into()
}
fn default_ingest_queue() -> String {
    "ingest".into()
}
fn default_ingest_dlq() -> String {
    "ingest-dead-letter".into()
}
fn default_max_backlog() -> u64 {
    ingest::DEFAULT_MAX_BACKLOG
}
fn default_max_receives() -> u32 {
    10
}
fn default_max_message_bytes() -> usize {
    256 * 1024
}

impl Default for Queues {
    fn default() -> Self {
        Queues {
            backend: default_backend(),
            ingest: default_ingest_queue(),
            ingest_dead_letter: default_ingest_dlq(),
            max_receives: default_max_receives(),
            max_message_bytes: default_max_message_bytes(),
            max_backlog: default_max_backlog(),
            sync: default_sync(),
            max_disk_bytes: 0,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Store {
    /// `local` (the data directory) or `s3`: claim checks and dead letters.
    #[serde(default)]
    pub backend: Option<String>,
    pub bucket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Aws {
    pub region: Option<String>,
    /// LocalStack or moto; implies path-style S3 addressing.
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TransformConfig {
    /// Where delivery listens: `host:port`; every address the name resolves to is used
    /// (a headless Service in Kubernetes).
    #[serde(default = "default_delivery_addr")]
    pub delivery_endpoint: String,
    /// Ingest-queue receive loops. Each round waits on the queue and on delivery, so a round
    /// in flight per poller keeps two cores busy only with about a dozen of them.
    #[serde(default = "default_pollers")]
    pub pollers: usize,
    #[serde(default)]
    pub dedupe: DedupeConfig,
}

fn default_pollers() -> usize {
    12
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            delivery_endpoint: default_delivery_addr(),
            pollers: default_pollers(),
            dedupe: DedupeConfig::default(),
        }
    }
}

/// The transform's window of repeats (see `transform::dedupe`).
#[derive(Debug, Deserialize)]
pub struct DedupeConfig {
    /// How long a delivered batch's keys are remembered. It must outlast a redelivery: the
    /// ingest queue's visibility timeout (60 s) and a restart.
    #[serde(default = "default_dedupe_window_secs")]
    pub window_secs: u64,
    /// Memory caps: about 20 bytes a key. Past a cap the oldest keys go before their time
    /// (a warning and `mpconnect_transform_dedupe_window_seconds` say how far back it reaches).
    #[serde(default = "default_max_batch_keys")]
    pub max_batch_keys: usize,
    #[serde(default = "default_max_event_keys")]
    pub max_event_keys: usize,
    /// Where the window is kept across restarts (under `data_dir` when relative); `""`: in
    /// memory only.
    #[serde(default = "default_dedupe_dir")]
    pub dir: PathBuf,
}

fn default_dedupe_window_secs() -> u64 {
    600
}
fn default_max_batch_keys() -> usize {
    2_000_000
}
fn default_max_event_keys() -> usize {
    500_000
}
fn default_dedupe_dir() -> PathBuf {
    PathBuf::from("dedupe")
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_secs: default_dedupe_window_secs(),
            max_batch_keys: default_max_batch_keys(),
            max_event_keys: default_max_event_keys(),
            dir: default_dedupe_dir(),
        }
    }
}

/// The smallest dedupe window: twice the ingest queue's visibility timeout, so a message whose
/// delete was lost is still remembered when it comes back.
pub const MIN_DEDUPE_WINDOW_SECS: u64 = 120;

#[derive(Debug, Default, Deserialize)]
pub struct DeliveryConfig {
    /// Every delivery process sharing the destinations' rate limits, as `host:port` names,
    /// comma-separated; each address a name resolves to is one process (in Kubernetes, the
    /// headless Service: one address per ready pod). Each process sends at most its equal share
    /// of a destination's `rate_limit`, which mParticle enforces per key, however many clients
    /// share the key. Unset: this process alone.
    pub peers: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Telemetry {
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub log_format: Option<String>,
    /// e.g. `info`, or `mpconnect=debug,info`. `RUST_LOG` wins.
    pub log_level: Option<String>,
    /// OTLP/gRPC endpoint for traces, e.g. `http://jaeger:4317`.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` wins; with neither, no spans are exported.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Shutdown {
    /// Every stage drains within this, in order: ingest, transform, delivery.
    #[serde(default = "default_grace")]
    pub grace_period_secs: u64,
}

fn default_grace() -> u64 {
    30
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace_period_secs: default_grace(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
}

/// Parses `text` with the environment's overrides; unknown keys come back as problems (with
/// their paths) rather than errors, so `validate` can list them with the rest.
pub fn parse(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let mut problems = Vec::new();
    for (name, value) in env {
        if let Some(path) = name.strip_prefix(ENV_PREFIX)
            && let Err(why) = set(&mut table, path, &value)
        {
            problems.push(format!("{name}: {why}"));
        }
    }
    let mut unknown = Vec::new();
    let config: Config = serde_ignored::deserialize(toml::Value::Table(table), |path| {
        unknown.push(path.to_string())
    })
    .map_err(|e| ConfigError::Parse(e.to_string()))?;
    // Sources and destinations are read by kind, so their unknown keys come back with them.
    for (i, source) in config.sources.iter().enumerate() {
        unknown.extend(
            source
                .unknown_keys
                .iter()
                .map(|k| format!("sources.{i}.{k}")),
        );
    }
    for (i, destination) in config.destinations.iter().enumerate() {
        unknown.extend(
            destination
                .unknown_keys
                .iter()
                .map(|k| format!("destinations.{i}.{k}")),
        );
    }
    problems.extend(unknown.into_iter().map(|p| format!("{p}: unknown key")));
    Ok((config, problems))
}

pub fn load(path: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?,
        None => LOCAL_DEFAULT.to_owned(),
    };
    parse(&text, std::env::vars())
}

/// Applies `MPCONNECT__A__B=value` to the table: path segments lowercased; in an array of
/// tables a segment names the entry by its `id` (`-` and `_` alike).
fn set(table: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("an empty path segment".into());
    }
    // A TOML literal (number, boolean, array) when it is one; otherwise the text.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, parents) = segments.split_last().expect("at least one segment");
    let mut parents = parents.iter();
    let mut current = table;
    while let Some(key) = parents.next() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let Some(id) = parents.next() else {
                    return Err(format!("{key} needs an entry id, then a key"));
                };
                let same = |s: &str| {
                    s.replace('-', "_")
                        .eq_ignore_ascii_case(&id.replace('-', "_"))
                };
                let found = items.iter_mut().find_map(|item| match item {
                    toml::Value::Table(t)
                        if t.get("id").and_then(|v| v.as_str()).is_some_and(same) =>
                    {
                        Some(t)
                    }
                    _ => None,
                });
                match found {
                    Some(t) => t,
                    None => return Err(format!("no entry of {key} has id {id}")),
                }
            }
            _ => return Err(format!("{key} is not a table")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Which secrets a process reads: the sources' (ingest) and the destinations' (delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretsOf {
    pub sources: bool,
    pub destinations: bool,
}

impl SecretsOf {
    pub const ALL: SecretsOf = SecretsOf {
        sources: true,
        destinations: true,
    };
}

impl Config {
    pub fn source(&self, id: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.id == id)
    }

    /// The environment variables holding the secrets that `of` reads.
    pub fn secret_env_vars(&self, of: SecretsOf) -> Vec<String> {
        let sources = (self.sources.iter())
            .filter(|_| of.sources)
            .flat_map(|s| s.secrets().into_iter().filter_map(|s| s.env_var()));
        let destinations = (self.destinations.iter())
            .filter(|_| of.destinations)
            .flat_map(|d| d.secret_env_vars());
        let mut names: Vec<String> = sources.chain(destinations).map(str::to_owned).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every problem, each with its path: references, required settings per kind, secrets
    /// that cannot be read (of those that `of` reads: a stage's pods hold only their own),
    /// addresses that do not parse, rules that are wrong.
    pub fn problems_for(&self, of: SecretsOf) -> Vec<String> {
        let mut problems = Problems::new(&self.data_dir);
        for (name, addr) in [
            ("listen.ingest", &self.listen.ingest),
            ("listen.delivery", &self.listen.delivery),
            ("listen.transform_admin", &self.listen.transform_admin),
            ("listen.delivery_admin", &self.listen.delivery_admin),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                problems.line(format!("{name}: {addr:?} is not an address (ip:port)"));
            }
        }
        if !matches!(self.queues.backend.as_str(), "embedded" | "sqs") {
            problems.line(format!(
                "queues.backend: {:?} is neither \"embedded\" nor \"sqs\"",
                self.queues.backend
            ));
        }
        if self.transform.dedupe.window_secs < MIN_DEDUPE_WINDOW_SECS {
            problems.line(format!(
                "transform.dedupe.window_secs: {} is shorter than a redelivery takes (at least {MIN_DEDUPE_WINDOW_SECS}: twice the ingest queue's visibility timeout)",
                self.transform.dedupe.window_secs
            ));
        }
        if !matches!(self.queues.sync.as_str(), "normal" | "full") {
            problems.line(format!(
                "queues.sync: {:?} is neither \"normal\" nor \"full\"",
                self.queues.sync
            ));
        }
        match self.store.backend.as_deref() {
            None | Some("local") => {}
            Some("s3") if self.store.bucket.is_some() => {}
            Some("s3") => problems.line("store.bucket: required with store.backend = \"s3\""),
            Some(other) => problems.line(format!(
                "store.backend: {other:?} is neither \"local\" nor \"s3\""
            )),
        }
        if self.queues.backend == "sqs" && self.store.backend.as_deref() != Some("s3") {
            problems.line(
                "store.backend: the SQS queues need an S3 store for claim checks and dead letters",
            );
        }
        problems.reads_secrets = of.sources;
        let mut ids = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            if !ids.insert(s.id.clone()) {
                problems.push(format_args!("{at}.id"), "used twice");
            }
            s.problems(&at, &mut problems);
        }
        problems.reads_secrets = of.destinations;
        let mut destination_ids = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let at = format!("destinations[{i}]");
            if !destination_ids.insert(d.id.clone()) {
                problems.push(format_args!("{at}.id"), "used twice");
            }
            d.problems(&at, &mut problems);
            // The transform waits this long for delivery's answer; an attempt that may take
            // longer is given up on while it may still succeed, and sent again: a duplicate.
            let deadline = transform::DELIVER_DEADLINE;
            if d.longest_attempt() + ANSWER_MARGIN > deadline {
                problems.push(
                    &at,
                    format_args!(
                        "attempt_timeout_ms ({}) plus request_timeout_ms ({}) must leave {} s \
                         of the transform's {} s wait for delivery's answer",
                        d.attempt_timeout().as_millis(),
                        d.request_timeout().as_millis(),
                        ANSWER_MARGIN.as_secs(),
                        deadline.as_secs()
                    ),
                );
            }
        }
        let mut connection_ids = HashSet::new();
        for (i, c) in self.connections.iter().enumerate() {
            let at = format!("connections[{i}]");
            if let Some(why) = runtime::envelope::route_id_problem(&c.id) {
                problems.line(format!("{at}.id: {:?} {why}: ids travel in routes", c.id));
            } else if !connection_ids.insert(c.id.as_str()) {
                problems.line(format!("{at}.id: used twice"));
            }
            if self.source(&c.source).is_none() {
                problems.line(format!("{at}.source: no source {:?}", c.source));
            }
            if c.destinations.is_empty() {
                problems.line(format!("{at}.destinations: none"));
            }
            for (j, d) in c.destinations.iter().enumerate() {
                if !self.destinations.iter().any(|x| &x.id == d) {
                    problems.line(format!("{at}.destinations[{j}]: no destination {d:?}"));
                }
            }
            if let Err(found) = c.rules.validate() {
                problems.extend(found.into_iter().map(|p| format!("{at}.rules: {p}")));
            }
        }
        for name in self.delivery.peers.iter().flat_map(|p| p.split(',')) {
            let port = name.trim().rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                problems.line(format!("delivery.peers: {name:?} is not host:port"));
            }
        }
        if let Some(format) = &self.telemetry.log_format
            && !matches!(format.as_str(), "auto" | "text" | "json")
        {
            problems.line(format!(
                "telemetry.log_format: {format:?} is not auto, text or json"
            ));
        }
        problems.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_is_valid() {
        let (config, unknown) = parse(LOCAL_DEFAULT, []).unwrap();
        assert_eq!(unknown, Vec::<String>::new());
        assert_eq!(config.problems_for(SecretsOf::ALL), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            colour = "blue"
            [listen]
            ingest = "nowhere"
            [[sources]]
            id = "web"
            kind = "http"
            api_key = "k"
            api_secret = { env = "MPCONNECT_TEST_SURELY_UNSET" }
            [[destinations]]
            id = "mp"
            kind = "mparticle"
            pod = "mars1"
            api_key = "k"
            api_secret = "s"
            typo_here = 1
            [[connections]]
            id = "c"
            source = "web"
            destinations = ["mp", "missing"]
            [transform.dedupe]
            window_secs = 30
        "#;
        let (config, mut problems) = parse(text, []).unwrap();
        problems.extend(config.problems_for(SecretsOf::ALL));
        for expected in [
            "colour: unknown key",
            "destinations.0.typo_here: unknown key",
            "listen.ingest: \"nowhere\" is not an address",
            "sources[0].api_secret: environment variable MPCONNECT_TEST_SURELY_UNSET is not set",
            "destinations[0].pod: \"mars1\" is not one of",
            "connections[0].destinations[1]: no destination \"missing\"",
            "transform.dedupe.window_secs: 30 is shorter than a redelivery takes",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected:?} not in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
    }

    #[test]
    fn ids_that_cannot_travel_in_routes_and_unknown_kinds_are_named() {
        let text = r#"
            [[sources]]
            id = "web"
            kind = "http"
            api_key = "k"
            api_secret = "s"
            [[destinations]]
            id = "a/b"
            kind = "file"
            [[connections]]
            id = "c"
            source = "web"
            destinations = ["a/b"]
            [[connections]]
            id = "c"
            source = "web"
            destinations = ["a/b"]
        "#;
        let (config, unknown) = parse(text, []).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(
            config.problems_for(SecretsOf::ALL),
            [
                "destinations[0].id: \"a/b\" contains '/' or ','".to_owned()
                    + ": ids travel in routes",
                "connections[1].id: used twice".to_owned(),
            ]
        );
        let wrong = parse("[[destinations]]\nid = 'x'\nkind = 'kafka'", []).unwrap_err();
        assert!(
            wrong.to_string().contains(
                "destination \"x\": kind \"kafka\" is not one of mparticle, webhook, s3, file"
            ),
            "{wrong}"
        );
    }

    #[test]
    fn environment_variables_override_by_path_and_by_id() {
        let text = r#"
            [[destinations]]
            id = "my-mp"
            kind = "file"
        "#;
        let env = [
            (
                "MPCONNECT__LISTEN__INGEST".to_owned(),
                "0.0.0.0:9000".to_owned(),
            ),
            ("MPCONNECT__QUEUES__MAX_RECEIVES".to_owned(), "3".to_owned()),
            (
                "MPCONNECT__DESTINATIONS__MY_MP__RETRY_QUEUE".to_owned(),
                "https://sqs/q".to_owned(),
            ),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let (config, problems) = parse(text, env).unwrap();
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(config.listen.ingest, "0.0.0.0:9000");
        assert_eq!(config.queues.max_receives, 3);
        assert_eq!(
            config.destinations[0].retry_queue.as_deref(),
            Some("https://sqs/q")
        );
        let (_, problems) = parse(
            text,
            [("MPCONNECT__DESTINATIONS__NOPE__URL".into(), "x".into())],
        )
        .unwrap();
        assert_eq!(
            problems,
            ["MPCONNECT__DESTINATIONS__NOPE__URL: no entry of destinations has id nope"]
        );
    }

    #[test]
    fn secrets_take_one_form() {
        assert!(
            parse(
                "[[sources]]\nid='a'\nkind='http'\napi_key={env='A', file='b'}",
                []
            )
            .is_err()
        );
        let (c, _) = parse(
            "[[sources]]\nid='a'\nkind='http'\napi_key={file='k', generate=true}",
            [],
        )
        .unwrap();
        assert_eq!(
            c.sources[0].secrets(),
            [&SecretConfig::File {
                path: "k".into(),
                generate: true
            }]
        );
    }

    #[test]
    fn each_stage_needs_only_the_secrets_it_reads() {
        let text = "[[sources]]\nid='web'\nkind='http'\napi_key={env='MPC_TEST_UNSET_SOURCE_KEY'}\n\
                    api_secret={env='MPC_TEST_UNSET_SOURCE_SECRET'}\n\
                    [[destinations]]\nid='mp'\nkind='mparticle'\npod='us1'\n\
                    api_key={env='MPC_TEST_UNSET_MP_KEY'}\napi_secret='inline'";
        let (c, _) = parse(text, []).unwrap();
        let missing = |of| {
            c.problems_for(of)
                .into_iter()
                .filter(|p| p.contains("MPC_TEST_UNSET"))
                .count()
        };
        let ingest = SecretsOf {
            sources: true,
            destinations: false,
        };
        let delivery = SecretsOf {
            sources: false,
            destinations: true,
        };
        let transform = SecretsOf {
            sources: false,
            destinations: false,
        };
        assert_eq!(missing(SecretsOf::ALL), 3);
        assert_eq!(missing(ingest), 2, "ingest reads the sources' secrets");
        assert_eq!(missing(delivery), 1, "delivery reads the destinations'");
        assert_eq!(missing(transform), 0, "the transform reads none");
        assert_eq!(
            c.secret_env_vars(ingest),
            ["MPC_TEST_UNSET_SOURCE_KEY", "MPC_TEST_UNSET_SOURCE_SECRET"]
        );
        assert_eq!(c.secret_env_vars(delivery), ["MPC_TEST_UNSET_MP_KEY"]);
        assert!(c.secret_env_vars(transform).is_empty());
    }

    #[test]
    fn an_attempt_must_end_before_the_transform_stops_waiting() {
        let text =
            |ms: u64| format!("[[destinations]]\nid='f'\nkind='file'\nattempt_timeout_ms={ms}");
        let (ok, _) = parse(&text(30_000), []).unwrap();
        assert!(ok.problems_for(SecretsOf::ALL).is_empty());
        let (late, _) = parse(&text(50_000), []).unwrap();
        let problems = late.problems_for(SecretsOf::ALL);
        assert!(
            problems[0].starts_with("destinations[0]: attempt_timeout_ms (50000) plus"),
            "{problems:?}"
        );
    }
}
