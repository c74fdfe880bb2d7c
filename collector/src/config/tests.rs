use std::{collections::HashMap, path::Path, time::Duration};

use clap::Parser;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name| map.get(name).cloned()
}

fn no_host() -> Option<String> {
    None
}

fn messages(problems: &[ConfigProblem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

/// A config file in a fresh temporary directory.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("collector-config-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.toml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn from_text(text: &str) -> (RunConfig, Vec<String>) {
    let mut config = RunConfig::default();
    let mut problems = Vec::new();
    file::apply_text(Path::new("c.toml"), text, &mut config, &mut problems);
    (config, messages(&problems))
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn args(flags: &[&str]) -> RunArgs {
    let mut argv = vec!["collector"];
    argv.extend_from_slice(flags);
    Cli::try_parse_from(argv).unwrap().run
}

#[test]
fn defaults() {
    let config = resolve_with(&RunArgs::default(), &env_of(&[("NODE_NAME", "node-1")]), no_host).unwrap();
    assert_eq!(config, RunConfig { node_name: "node-1".to_owned(), ..RunConfig::default() });
    assert_eq!(config.sinks, SinkSelection::Auto);
    assert_eq!(config.format, OutputFormat::Json);
    assert_eq!(config.state_dir, Path::new("/var/lib/collector"));
    assert_eq!(config.metrics_addr.to_string(), "127.0.0.1:9835");
    assert!(!config.dry_run && !config.emit_normal_exits);
    assert_eq!(config.component, "collector");
    assert_eq!(config.kubeconfig, None);
    assert_eq!(config.cri_socket, CriSocket::Auto);
    assert_eq!(config.ring_buffer_bytes, 1 << 20);
    assert_eq!(config.metadata_wait.0, Duration::from_secs(2));
    assert_eq!(config.tombstone_ttl.0, Duration::from_secs(300));
    assert_eq!(config.journal.max_age.0, Duration::from_secs(86_400));
    assert_eq!(config.journal.max_bytes, ByteSize(64 << 20));
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = TempFile::new(
        "precedence",
        "metadata_wait = \"1s\"\nformat = \"text\"\ncomponent = \"from-file\"\n\
         [journal]\nmax_age = \"1h\"\n",
    );
    let path = file.path.to_str().unwrap();
    let env = env_of(&[
        ("COLLECTOR_CONFIG", path),
        ("COLLECTOR_METADATA_WAIT", "3s"),
        ("COLLECTOR_COMPONENT", "from-env"),
        ("COLLECTOR_JOURNAL_MAX_AGE", "2h"),
        ("NODE_NAME", "n"),
    ]);
    let flags = args(&["--metadata-wait", "500ms"]);
    let config = resolve_with(&flags, &env, no_host).unwrap();
    assert_eq!(config.metadata_wait.0, Duration::from_millis(500)); // flag
    assert_eq!(config.component, "from-env"); // env over file
    assert_eq!(config.journal.max_age.0, Duration::from_secs(7200)); // env over file
    assert_eq!(config.format, OutputFormat::Text); // file over default
    assert_eq!(config.tombstone_ttl, DEFAULT_TOMBSTONE_TTL); // default

    // Without the flag the variable wins, without the variable the file.
    let config = resolve_with(&RunArgs::default(), &env, no_host).unwrap();
    assert_eq!(config.metadata_wait.0, Duration::from_secs(3));
    let env = env_of(&[("COLLECTOR_CONFIG", path), ("NODE_NAME", "n")]);
    let config = resolve_with(&RunArgs::default(), &env, no_host).unwrap();
    assert_eq!(config.metadata_wait.0, Duration::from_secs(1));
    assert_eq!(config.component, "from-file");

    // --config beats COLLECTOR_CONFIG; an empty variable counts as unset.
    let other = TempFile::new("precedence-other", "component = \"other\"\n");
    let flags = args(&["--config", other.path.to_str().unwrap()]);
    let env = env_of(&[("COLLECTOR_CONFIG", path), ("COLLECTOR_COMPONENT", ""), ("NODE_NAME", "n")]);
    assert_eq!(resolve_with(&flags, &env, no_host).unwrap().component, "other");
}

#[test]
fn every_problem_is_reported_at_once() {
    let file = TempFile::new(
        "problems",
        "sinks = [\"kubernetes\", \"kafka\"]\nmetadata_wait = \"2x\"\n\
         ring_buffer_bytes = 5000\nring_bufer_bytes = 4096\ndry_run = \"yes\"\n\
         \n[journal]\nmax_bytes = 1024\nmax_agee = \"1h\"\n",
    );
    let env = env_of(&[
        ("COLLECTOR_METRICS_ADDR", "localhost:9835"),
        ("COLLECTOR_TOMBSTONE_TTL", "0s"),
        ("NODE_NAME", "Bad_Name"),
    ]);
    let flags = args(&[
        "--config",
        file.path.to_str().unwrap(),
        "--format",
        "yaml",
        "--sink",
        "auto,stdout",
        "--state-dir",
        "var/lib",
        "--cri-socket",
        "run/containerd.sock",
        "--metadata-wait",
        "5m",
    ]);
    let problems = resolve_with(&flags, &env, no_host).unwrap_err();
    let f = file.path.display();
    assert_eq!(
        messages(&problems),
        [
            format!("{f}:1: sinks: unknown sink \"kafka\" (expected kubernetes, stdout, journal or auto)"),
            format!("{f}:2: metadata_wait: invalid duration \"2x\": units are ms, s, m, h and d"),
            format!(
                "{f}:3: ring_buffer_bytes: ring buffer size 5000 is not a power of two of at least \
                 4096 (and at most 2GiB)"
            ),
            format!("{f}:4: unknown key `ring_bufer_bytes`"),
            format!("{f}:5: dry_run: invalid boolean \"yes\" (expected true, false, 1 or 0)"),
            format!("{f}:8: journal.max_bytes: invalid size 1024: the journal needs at least 1MiB"),
            format!("{f}:9: unknown key `journal.max_agee`"),
            "COLLECTOR_METRICS_ADDR: invalid address \"localhost:9835\": expected IP:PORT, such as \
             0.0.0.0:9835 or [::]:9835"
                .to_owned(),
            "COLLECTOR_TOMBSTONE_TTL: 0s is out of range: must be more than 0s".to_owned(),
            "--sink: `auto` cannot be combined with other sinks".to_owned(),
            "--format: unknown format \"yaml\" (expected text or json)".to_owned(),
            "--state-dir: \"var/lib\" is not an absolute path".to_owned(),
            "--cri-socket: \"run/containerd.sock\" is not an absolute path".to_owned(),
            "--metadata-wait: 5m is out of range: must be at most 1m".to_owned(),
            "NODE_NAME: invalid node name \"Bad_Name\": expected lowercase letters, digits, '-' and \
             '.', at most 253 characters"
                .to_owned(),
        ]
    );
}

#[test]
fn unknown_keys_name_the_key_the_file_and_the_line() {
    let (_, problems) = from_text("# comment\n\nnode_nmae = \"x\"\n[journal]\nmax_bytes = \"1GiB\"\n");
    assert_eq!(problems, ["c.toml:3: unknown key `node_nmae`"]);
    let (_, problems) = from_text("[sinks]\n");
    assert_eq!(problems, ["c.toml:1: sinks: expected an array of sink names, found table"]);
    let (_, problems) = from_text("journal = 3\n[metrics]\naddr = \"x\"\n");
    assert_eq!(problems, ["c.toml:1: journal: expected a table, found integer", "c.toml:2: unknown key `metrics`",]);
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let (_, problems) = from_text("format = \"text\"\nstate_dir = /var/lib\n");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("c.toml:2: invalid TOML: "), "{problems:?}");
    let (_, problems) = from_text("format = \"text\"\nformat = \"json\"\n");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("c.toml:2: invalid TOML: "), "{problems:?}");
}

#[test]
fn an_unreadable_file_is_a_problem() {
    let flags = args(&["--config", "/nonexistent/collector.toml"]);
    let problems = resolve_with(&flags, &env_of(&[("NODE_NAME", "n")]), no_host).unwrap_err();
    assert_eq!(
        messages(&problems),
        ["/nonexistent/collector.toml: cannot read the configuration file: No such file or \
          directory (os error 2)"]
    );
}

#[test]
fn file_values_of_every_form() {
    let (config, problems) = from_text(
        "sinks = \"stdout,journal,stdout\"\nformat = \"text\"\nnode_name = \"node-a.example\"\n\
         state_dir = \"/srv/collector\"\nmetrics_addr = \"[::]:9100\"\ndry_run = true\n\
         emit_normal_exits = false\ncomponent = \"oom watcher\"\nkubeconfig = \"kc.yaml\"\n\
         cri_socket = \"none\"\nring_buffer_bytes = \"256KiB\"\nmetadata_wait = \"250ms\"\n\
         tombstone_ttl = \"1h\"\njournal.max_age = \"7d\"\njournal.max_bytes = \"1GiB\"\n\
         stream_socket = \"none\"\n[node_health]\npressure_resources = [\"cpu\", \"memory\", \"cpu\"]\n\
         pressure_threshold = \"1.5%\"\npressure_window = \"4s\"\n\
         condition_clear_after = \"3s\"\nfrequent_oom_kills = 3\nfrequent_oom_window = \"1m\"\n",
    );
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        config,
        RunConfig {
            sinks: SinkSelection::Explicit(vec![Sink::Stdout, Sink::Journal]),
            format: OutputFormat::Text,
            node_name: "node-a.example".to_owned(),
            state_dir: PathBuf::from("/srv/collector"),
            metrics_addr: "[::]:9100".parse().unwrap(),
            dry_run: true,
            emit_normal_exits: false,
            component: "oom watcher".to_owned(),
            kubeconfig: Some(PathBuf::from("kc.yaml")),
            cri_socket: CriSocket::Off,
            ring_buffer_bytes: 256 << 10,
            metadata_wait: HumanDuration(Duration::from_millis(250)),
            tombstone_ttl: HumanDuration::from_secs(3600),
            stream_socket: StreamSocket::Disabled,
            journal: JournalConfig { max_age: HumanDuration::from_secs(7 * 86_400), max_bytes: ByteSize(1 << 30) },
            node_health: NodeHealthConfig {
                pressure_resources: vec![PressureResource::Cpu, PressureResource::Memory],
                pressure_threshold: Percent { tenths: 15 },
                pressure_window: HumanDuration::from_secs(4),
                condition_clear_after: HumanDuration::from_secs(3),
                frequent_oom_kills: 3,
                frequent_oom_window: HumanDuration::from_secs(60),
            },
            filters: Vec::new(),
            webhooks: Vec::new(),
            source_file: None,
        }
    );
    let (config, problems) = from_text("ring_buffer_bytes = 0x1000\ncri_socket = \"/run/c.sock\"\n");
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(config.ring_buffer_bytes, 4096);
    assert_eq!(config.cri_socket, CriSocket::Path(PathBuf::from("/run/c.sock")));
    let (_, problems) = from_text("ring_buffer_bytes = 4294967296\nmetadata_wait = 2\n");
    assert_eq!(
        problems,
        [
            "c.toml:1: ring_buffer_bytes: ring buffer size 4294967296 is not a power of two of at \
             least 4096 (and at most 2GiB)",
            "c.toml:2: metadata_wait: expected a duration string such as \"2s\", found integer",
        ]
    );
}

#[test]
fn flags_parse_as_documented() {
    let flags = args(&["--sink", "kubernetes", "--sink", "journal,stdout", "--dry-run", "--emit-normal-exits=false"]);
    assert_eq!(flags.sinks, ["kubernetes", "journal", "stdout"]);
    assert_eq!(flags.dry_run, Some(true));
    assert_eq!(flags.emit_normal_exits, Some(false));
    let env = env_of(&[("COLLECTOR_EMIT_NORMAL_EXITS", "1"), ("COLLECTOR_DRY_RUN", "false"), ("NODE_NAME", "n")]);
    let config = resolve_with(&flags, &env, no_host).unwrap();
    assert_eq!(config.sinks, SinkSelection::Explicit(vec![Sink::Kubernetes, Sink::Journal, Sink::Stdout]));
    assert!(config.dry_run);
    assert!(!config.emit_normal_exits);
    let config = resolve_with(&RunArgs::default(), &env, no_host).unwrap();
    assert!(!config.dry_run);
    assert!(config.emit_normal_exits);
}

#[test]
fn auto_sinks_resolve_by_cluster_reachability() {
    assert_eq!(SinkSelection::Auto.resolve(true), [Sink::Kubernetes, Sink::Journal]);
    assert_eq!(SinkSelection::Auto.resolve(false), [Sink::Stdout, Sink::Journal]);
    let explicit = SinkSelection::Explicit(vec![Sink::Stdout]);
    assert_eq!(explicit.resolve(true), [Sink::Stdout]);
}

#[test]
fn node_name_falls_back_to_node_name_variable_then_hostname() {
    let host = || Some("Worker-7\n".to_owned());
    let config = resolve_with(&RunArgs::default(), &env_of(&[]), host).unwrap();
    assert_eq!(config.node_name, "worker-7");
    let env = env_of(&[("NODE_NAME", "from-downward-api")]);
    assert_eq!(resolve_with(&RunArgs::default(), &env, host).unwrap().node_name, "from-downward-api");
    let flags = args(&["--node-name", "from-flag"]);
    assert_eq!(resolve_with(&flags, &env, host).unwrap().node_name, "from-flag");
    let problems = resolve_with(&RunArgs::default(), &env_of(&[]), no_host).unwrap_err();
    assert_eq!(
        messages(&problems),
        ["hostname: unreadable or empty, so the node name is unknown: set --node-name, \
          COLLECTOR_NODE_NAME or NODE_NAME"]
    );
    let problems = resolve_with(&RunArgs::default(), &env_of(&[]), || Some("a_b".to_owned())).unwrap_err();
    assert_eq!(
        messages(&problems),
        ["hostname: invalid node name \"a_b\": expected lowercase letters, digits, '-' and '.', at \
          most 253 characters"]
    );
}

#[test]
fn check_prints_the_effective_config_as_toml_that_reads_back() {
    let file =
        TempFile::new("check", "sinks = [\"stdout\"]\nkubeconfig = \"/etc/kc\"\n[journal]\nmax_bytes = 2097152\n");
    let check_args = CheckArgs { file: Some(file.path.clone()) };
    let env = env_of(&[("NODE_NAME", "node-1"), ("COLLECTOR_METADATA_WAIT", "1500ms")]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(check(&check_args, &env, &mut out, &mut err).unwrap(), 0);
    assert!(err.is_empty());
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "sinks = [\"stdout\"]\nformat = \"json\"\nnode_name = \"node-1\"\n\
         state_dir = \"/var/lib/collector\"\nmetrics_addr = \"127.0.0.1:9835\"\ndry_run = false\n\
         emit_normal_exits = false\ncomponent = \"collector\"\nkubeconfig = \"/etc/kc\"\n\
         cri_socket = \"auto\"\nring_buffer_bytes = 1048576\nmetadata_wait = \"1s500ms\"\n\
         tombstone_ttl = \"5m\"\nstream_socket = \"/run/collector/stream.sock\"\n\n[journal]\nmax_age = \"1d\"\nmax_bytes = \"2MiB\"\n\n\
         [node_health]\npressure_resources = [\"memory\"]\npressure_threshold = \"5%\"\npressure_window = \"10s\"\n\
         condition_clear_after = \"30m\"\n\
         frequent_oom_kills = 5\nfrequent_oom_window = \"10m\"\n"
    );
    let mut expected = resolve_with(
        &RunArgs { file: ConfigFileArgs { config: Some(file.path.clone()) }, ..RunArgs::default() },
        &env,
        no_host,
    )
    .unwrap();
    assert_eq!(expected.source_file.as_ref(), Some(&file.path));
    expected.source_file = None;
    // The printed form reads back the same, through serde and through the file layer.
    assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), expected);
    let (reread, problems) = from_text(&text);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(reread, expected);
}

#[test]
fn check_lists_every_problem_and_exits_2() {
    let file = TempFile::new("check-bad", "sinks = []\nformat = 1\nbogus = true\n");
    let check_args = CheckArgs { file: Some(file.path.clone()) };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = check(&check_args, &env_of(&[("NODE_NAME", "n")]), &mut out, &mut err).unwrap();
    assert_eq!(status, EXIT_PROBLEMS);
    assert!(out.is_empty());
    let f = file.path.display();
    assert_eq!(
        String::from_utf8(err).unwrap(),
        format!(
            "{f}:1: sinks: no sink given (expected kubernetes, stdout, journal or auto)\n\
             {f}:2: format: expected a string, found integer\n\
             {f}:3: unknown key `bogus`\n\
             3 problems in the configuration\n"
        )
    );
}

#[test]
fn serde_form_denies_unknown_fields() {
    let err = toml::from_str::<RunConfig>("format = \"text\"\nextra = 1\n").unwrap_err();
    assert!(err.message().contains("unknown field `extra`"), "{err}");
    assert_eq!(toml::from_str::<RunConfig>("sinks = \"auto\"\n").unwrap().sinks, SinkSelection::Auto);
}

/// A small deterministic generator (xorshift) of TOML-ish documents and flag values.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const KEYS: &[&str] = &[
    "sinks",
    "format",
    "node_name",
    "state_dir",
    "metrics_addr",
    "dry_run",
    "emit_normal_exits",
    "component",
    "kubeconfig",
    "cri_socket",
    "ring_buffer_bytes",
    "metadata_wait",
    "tombstone_ttl",
    "journal.max_age",
    "journal.max_bytes",
    "journal",
    "[journal]",
    "[[x]]",
    "unknown",
    "\"quoted key\"",
    "a.b.c",
    "",
    "=",
    "é",
];
const VALUES: &[&str] = &[
    "\"2s\"",
    "\"1h30m\"",
    "\"\"",
    "\"auto\"",
    "[\"kubernetes\", \"kafka\"]",
    "[]",
    "[1, 2]",
    "4096",
    "-1",
    "0x1000",
    "9223372036854775807",
    "1e400",
    "true",
    "\"none\"",
    "\"/var/lib\"",
    "\"\\u0000\"",
    "{ a = 1 }",
    "1979-05-27",
    "\"99999999999999999999d\"",
    "\"18446744073709551615GiB\"",
    "\"0.0.0.0:99999\"",
    "[\"auto\", \"auto\"]",
    "'''\n'''",
    "\"\u{1b}[2J\"",
    "\"",
    "[",
    "nan",
    "\"-5m\"",
    "\"1GiB\"",
];

#[test]
fn random_toml_never_panics() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..(noise.next() % 8) {
            let key = noise.pick(KEYS);
            let sep = noise.pick(&[" = ", "=", " ", "\n", " = = "]);
            let value = noise.pick(VALUES);
            text.push_str(&format!("{key}{sep}{value}\n"));
            if noise.next().is_multiple_of(10) {
                // Raw bytes, cut at a char boundary.
                let junk: String = (0..(noise.next() % 6))
                    .map(|_| char::from_u32((noise.next() % 0x2FF) as u32).unwrap_or('?'))
                    .collect();
                text.push_str(&junk);
            }
        }
        let _ = from_text(&text);
        let _ = toml::from_str::<RunConfig>(&text);
    }
}

#[test]
fn random_flag_and_env_values_never_panic() {
    let mut noise = Noise(42);
    let texts: Vec<&str> = VALUES
        .iter()
        .map(|v| v.trim_matches('"'))
        .chain(["", " ", "1s1", "ms", "1KiB", "auto,", ",", "\u{0}", "::1"])
        .collect();
    for _ in 0..2000 {
        let mut pick = || Some(texts[(noise.next() % texts.len() as u64) as usize].to_owned());
        let flags = RunArgs {
            file: ConfigFileArgs { config: None },
            sinks: vec![pick().unwrap()],
            format: pick(),
            node_name: pick(),
            state_dir: pick(),
            metrics_addr: pick(),
            dry_run: None,
            emit_normal_exits: Some(true),
            component: pick(),
            sources: SourceArgs { kubeconfig: pick(), cri_socket: pick() },
            ring_buffer_bytes: pick(),
            metadata_wait: pick(),
            tombstone_ttl: pick(),
            journal_max_age: pick(),
            journal_max_bytes: pick(),
            stream_socket: pick(),
            pressure_resources: pick(),
            pressure_threshold: pick(),
            pressure_window: pick(),
            condition_clear_after: pick(),
            frequent_oom_kills: pick(),
            frequent_oom_window: pick(),
        };
        let value = pick().unwrap();
        let env = move |name: &str| (name != "COLLECTOR_CONFIG").then(|| value.clone());
        let _ = resolve_with(&flags, &env, no_host);
    }
}

#[test]
fn clap_definition_is_consistent() {
    use clap::CommandFactory as _;
    Cli::command().debug_assert();
}

#[test]
fn filter_problems_name_the_file_line_rule_and_field() {
    let (config, problems) = from_text(
        "format = \"text\"\n\n[[filters]]\nname = \"quiet\"\naction = \"drop\"\nmatch = { container = \"*-sidecar\", exit_code = 143 }\n\n[[filters]]\nname = \"bad\"\naction = \"mute\"\nmatch = { pod = \"x\" }\n",
    );
    assert_eq!(problems, [r#"c.toml:10: filter rule "bad": `action`: expected "drop" or "keep", found "mute""#]);
    assert_eq!(config.filters.len(), 1);
    assert_eq!(config.filters[0].name, "quiet");
    assert_eq!(config.format, OutputFormat::Text);
}

#[test]
fn filters_print_as_toml_that_reads_back() {
    let (mut config, problems) = from_text(
        "[[filters]]\nname = \"quiet\"\naction = \"keep\"\nmatch = { namespace = \"prod-*\", type = \"Warning\", \
         signal = \"TERM\", main_process = true }\n",
    );
    assert_eq!(problems, Vec::<String>::new());
    "node-1".clone_into(&mut config.node_name);
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("[[filters]]\nname = \"quiet\"\naction = \"keep\"\n"), "{text}");
    assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), config);
    let (reread, problems) = from_text(&text);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(reread, config);
}

#[test]
fn node_health_problems_name_their_key_and_range() {
    let file = TempFile::new(
        "node-health",
        "[node_health]\npressure_threshold = \"0%\"\npressure_window = \"1s\"\nfrequent_oom_kills = 0\n\
         condition_clear_after = \"0s\"\nfrequent_oom_window = \"soon\"\npressure_resources = [\"disk\", \"cpu\", \"pids\"]\n",
    );
    let env = env_of(&[("NODE_NAME", "node-1"), ("COLLECTOR_PRESSURE_THRESHOLD", "12.25%")]);
    let problems = resolve_with(&args(&["--config", file.path.to_str().unwrap()]), &env, no_host).unwrap_err();
    let f = file.path.display();
    assert_eq!(
        messages(&problems),
        [
            format!(
                "{f}:2: node_health.pressure_threshold: invalid percentage \"0%\": expected more than 0% and at \
                 most 100%, with at most one decimal, such as 10% or 1.5%"
            ),
            format!("{f}:3: node_health.pressure_window: 1s is out of range: must be from 2s to 5m"),
            format!(
                "{f}:4: node_health.frequent_oom_kills: invalid count \"0\": expected a whole number of at least 1"
            ),
            format!("{f}:5: node_health.condition_clear_after: 0s is out of range: must be more than 0s"),
            format!(
                "{f}:6: node_health.frequent_oom_window: invalid duration \"soon\": expected a number followed by a unit, such as 2s or 1h30m"
            ),
            format!(
                "{f}:7: node_health.pressure_resources: unknown pressure resource \"disk\", \"pids\" (expected memory, cpu, io or none)"
            ),
            "COLLECTOR_PRESSURE_THRESHOLD: invalid percentage \"12.25%\": expected more than 0% and at most 100%, \
             with at most one decimal, such as 10% or 1.5%"
                .to_owned(),
        ]
    );
    let config =
        resolve_with(&args(&["--pressure-threshold", "2.5%"]), &env_of(&[("NODE_NAME", "n")]), no_host).unwrap();
    assert_eq!(config.node_health.pressure_threshold, Percent { tenths: 25 });
    assert_eq!(config.node_health.pressure_threshold.to_string(), "2.5%");
    assert_eq!(config.node_health.pressure_resources, [PressureResource::Memory]);
    let env = env_of(&[("NODE_NAME", "n"), ("COLLECTOR_PRESSURE_RESOURCES", "io, cpu")]);
    let config = resolve_with(&args(&[]), &env, no_host).unwrap();
    assert_eq!(config.node_health.pressure_resources, [PressureResource::Io, PressureResource::Cpu]);
    // The flag wins over the variable; `none` turns the sampler off.
    let config = resolve_with(&args(&["--pressure-resources", "none"]), &env, no_host).unwrap();
    assert_eq!(config.node_health.pressure_resources, []);
}
