//! Property tests of the configuration: no input panics; a configuration that is accepted
//! meets every documented constraint and reads back unchanged from the TOML `config check`
//! prints; durations and sizes print in a form that parses back to the same value.

use std::{collections::HashMap, path::Path, time::Duration};

use clap::Parser;
use proptest::{collection::vec, option, prelude::*, sample::select};

use super::{fields::Field, *};

fn from_text(text: &str) -> (RunConfig, Vec<ConfigProblem>) {
    let mut config = RunConfig::default();
    let mut problems = Vec::new();
    file::apply_text(Path::new("c.toml"), text, &mut config, &mut problems);
    (config, problems)
}

/// The documented constraints, stated independently of the parsers.
fn check_constraints(config: &RunConfig) -> Result<(), TestCaseError> {
    let node = &config.node_name;
    prop_assert!(!node.is_empty() && node.len() <= 253, "{:?}", node);
    for label in node.split('.') {
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        prop_assert!(!label.is_empty() && label.bytes().all(ok), "{:?}", node);
        prop_assert!(!label.starts_with('-') && !label.ends_with('-'), "{:?}", node);
    }
    prop_assert!(config.state_dir.is_absolute(), "{:?}", config.state_dir);
    let component = &config.component;
    prop_assert!((1..=128).contains(&component.chars().count()) && !component.chars().any(char::is_control));
    prop_assert!(config.kubeconfig.as_ref().is_none_or(|path| !path.as_os_str().is_empty()));
    if let CriSocket::Path(path) = &config.cri_socket {
        prop_assert!(path.is_absolute(), "{:?}", path);
    }
    if let SinkSelection::Explicit(sinks) = &config.sinks {
        prop_assert!(!sinks.is_empty());
        prop_assert!(sinks.iter().enumerate().all(|(i, sink)| !sinks[..i].contains(sink)), "{:?}", sinks);
    }
    prop_assert!(config.ring_buffer_bytes >= 4096 && config.ring_buffer_bytes.is_power_of_two());
    prop_assert!(config.metadata_wait.0 <= Duration::from_secs(60));
    prop_assert!(!config.tombstone_ttl.0.is_zero() && !config.journal.max_age.0.is_zero());
    prop_assert!(config.journal.max_bytes.0 >= 1 << 20);
    Ok(())
}

/// An accepted configuration, printed as `config check` prints it, reads back to itself
/// through the file layer (no problem) and through serde.
fn check_reads_back(config: &RunConfig) -> Result<(), TestCaseError> {
    check_constraints(config)?;
    let text = toml::to_string(config).map_err(|err| TestCaseError::fail(err.to_string()))?;
    let (again, problems) = from_text(&text);
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    prop_assert!(problems.is_empty(), "{:?} reading back {:?}", problems, text);
    prop_assert_eq!(&again, config, "{}", text);
    let serde = toml::from_str::<RunConfig>(&text).map_err(|err| TestCaseError::fail(format!("{err}: {text}")))?;
    prop_assert_eq!(&serde, config);
    Ok(())
}

const UNITS: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
const SIZE_UNITS: [(&str, u64); 5] = [("", 1), ("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)];

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..2000_u64, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

/// `<number><unit>` parts, numbers maybe with leading zeros, and the milliseconds they make
/// (`None` when the total does not fit).
fn duration_parts() -> impl Strategy<Value = (String, Option<u64>)> {
    vec((number(), select(UNITS.to_vec()), 0..3_usize), 1..4).prop_map(|parts| {
        let mut text = String::new();
        let mut total: Option<u64> = Some(0);
        for (n, (unit, scale), zeros) in parts {
            text.push_str(&format!("{}{n}{unit}", "0".repeat(zeros)));
            total = total.and_then(|t| n.checked_mul(scale).and_then(|part| t.checked_add(part)));
        }
        (text, total)
    })
}

/// `<number>[ ]<unit>` and the bytes it makes (`None` when it does not fit).
fn size_parts() -> impl Strategy<Value = (String, Option<u64>)> {
    (number(), select(SIZE_UNITS.to_vec()), any::<bool>()).prop_map(|(n, (unit, scale), space)| {
        let space = if space && !unit.is_empty() { " " } else { "" };
        (format!("{n}{space}{unit}"), n.checked_mul(scale))
    })
}

/// Text that is sometimes valid for some field and sometimes garbage.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => duration_parts().prop_map(|(text, _)| text),
        1 => (1..60_u64).prop_map(|s| format!("{s}s")),
        2 => size_parts().prop_map(|(text, _)| text),
        1 => (12..32_u32).prop_map(|shift| (1_u64 << shift).to_string()),
        1 => "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}",
        1 => "/[a-zA-Z0-9/._ -]{0,20}",
        1 => select(vec!["auto", "none", "text", "json", "true", "false", "1", "0", "stdout", "kubernetes,journal",
            "journal, stdout ,stdout", "auto,stdout", "", " ", "yes", "0.0.0.0:9835", "[::1]:80", "[fe80::1%2]:1"])
            .prop_map(str::to_owned),
        1 => any::<SocketAddr>().prop_map(|addr| addr.to_string()),
        1 => any::<String>(),
        1 => "\\PC{1,140}",
    ]
}

/// Text meant to be valid for `field` (some constraints, like a non-zero duration, are left
/// to chance).
fn valid_text(field: Field) -> BoxedStrategy<String> {
    let path = "/[a-zA-Z0-9/._ -]{0,20}";
    let millis = |max: u64| (0..=max).prop_map(|ms| HumanDuration(Duration::from_millis(ms)).to_string());
    match field {
        Field::Sinks => select(vec!["auto", "stdout", "kubernetes,journal", "journal, stdout ,stdout", " journal"])
            .prop_map(str::to_owned)
            .boxed(),
        Field::Format => select(vec!["text", "json"]).prop_map(str::to_owned).boxed(),
        Field::NodeName => "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}".boxed(),
        Field::StateDir => path.boxed(),
        Field::Kubeconfig => prop_oneof![path, "\\PC{1,20}"].boxed(),
        Field::MetricsAddr => any::<SocketAddr>().prop_map(|addr| addr.to_string()).boxed(),
        Field::DryRun | Field::EmitNormalExits => select(vec!["true", "false"]).prop_map(str::to_owned).boxed(),
        Field::Component => "\\PC{1,40}".boxed(),
        Field::CriSocket => prop_oneof![Just("auto".to_owned()), Just("none".to_owned()), path].boxed(),
        Field::StreamSocket => prop_oneof![Just("none".to_owned()), path].boxed(),
        Field::RingBufferBytes => (12..=31_u32).prop_map(|shift| ByteSize(1 << shift).to_string()).boxed(),
        Field::MetadataWait => millis(60_000).boxed(),
        Field::TombstoneTtl | Field::JournalMaxAge => {
            prop_oneof![millis(u64::MAX), duration_parts().prop_map(|(text, _)| text)].boxed()
        }
        Field::JournalMaxBytes => ((1_u64 << 20)..=u64::MAX).prop_map(|bytes| ByteSize(bytes).to_string()).boxed(),
        Field::PressureResources => {
            select(vec!["memory", "cpu,io", "memory, cpu ,io", "none", "io,io", ""]).prop_map(str::to_owned).boxed()
        }
        Field::PressureThreshold => (1..=1000_u32).prop_map(|tenths| Percent { tenths }.to_string()).boxed(),
        Field::PressureWindow => {
            (2000..=300_000_u64).prop_map(|ms| HumanDuration(Duration::from_millis(ms)).to_string()).boxed()
        }
        Field::ConditionClearAfter | Field::FrequentOomWindow => {
            prop_oneof![millis(u64::MAX), duration_parts().prop_map(|(text, _)| text)].boxed()
        }
        Field::FrequentOomKills => (1..=u32::MAX).prop_map(|count| count.to_string()).boxed(),
    }
}

/// A value for `field`: mostly valid, sometimes anything.
fn text_for(field: Field) -> impl Strategy<Value = String> {
    prop_oneof![6 => valid_text(field), 1 => value_text()]
}

/// Distinct fields, each with a value.
fn settings(max: usize) -> impl Strategy<Value = Vec<(Field, String)>> {
    proptest::sample::subsequence(Field::ALL.to_vec(), 0..=max)
        .prop_flat_map(|fields| fields.into_iter().map(|field| (Just(field), text_for(field))).collect::<Vec<_>>())
}

/// A TOML value of another type than a string.
fn other_toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<bool>().prop_map(|b| b.to_string()),
        (12..40_u32).prop_map(|s| (1_i64 << s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        vec(select(vec!["auto", "stdout", "journal", "kubernetes", "kafka"]), 0..4)
            .prop_map(|names| format!("{names:?}")),
        select(vec!["[1, 2]", "{ a = 1 }", "1979-05-27", "1.5", "nan", "'''\n'''", "\"", "["]).prop_map(str::to_owned),
    ]
}

fn key() -> impl Strategy<Value = String> {
    let mut keys: Vec<String> = Field::ALL.iter().map(|field| field.key().to_owned()).collect();
    keys.extend(["journal", "unknown", "\"quoted\"", "a.b"].map(str::to_owned));
    select(keys)
}

/// One `key = value` line of a tidy document: a TOML string mostly, else the key's integer or
/// boolean form or a value of the wrong type.
fn tidy_line(field: Field, text: String) -> impl Strategy<Value = String> {
    let string = toml::Value::String(text).to_string();
    let typed = match field {
        Field::DryRun | Field::EmitNormalExits => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Field::RingBufferBytes => (12..=31_u32).prop_map(|s| (1_u64 << s).to_string()).boxed(),
        Field::JournalMaxBytes => ((1_i64 << 20)..).prop_map(|n| n.to_string()).boxed(),
        _ => other_toml_value().boxed(),
    };
    prop_oneof![8 => Just(string), 1 => typed].prop_map(move |value| format!("{} = {value}", field.key()))
}

/// A TOML document: mostly distinct known keys with mostly valid values, else any keys,
/// values and junk lines.
fn document() -> impl Strategy<Value = String> {
    let tidy = settings(8)
        .prop_flat_map(|settings| settings.into_iter().map(|(field, text)| tidy_line(field, text)).collect::<Vec<_>>());
    let value = prop_oneof![value_text().prop_map(|text| toml::Value::String(text).to_string()), other_toml_value()];
    let line = prop_oneof![
        8 => (key(), value).prop_map(|(key, value)| format!("{key} = {value}")),
        1 => Just("[journal]".to_owned()),
        1 => "\\PC{0,20}",
    ];
    prop_oneof![
        3 => tidy.prop_map(|lines| lines.join("\n")),
        1 => vec(line, 0..10).prop_map(|lines| lines.join("\n")),
    ]
}

/// A node name or hostname, maybe absent.
fn setting() -> impl Strategy<Value = Option<String>> {
    option::of(text_for(Field::NodeName))
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every millisecond count prints in a form that parses back to it; finer durations lose
    /// only their sub-millisecond part.
    #[test]
    fn durations_print_and_parse_back(millis in prop_oneof![any::<u64>(), 0..100_000_000_u64], nanos in 0..1_000_000_u32) {
        let exact = HumanDuration(Duration::from_millis(millis));
        prop_assert_eq!(exact.to_string().parse::<HumanDuration>(), Ok(exact));
        let finer = HumanDuration(Duration::from_millis(millis) + Duration::from_nanos(u64::from(nanos)));
        prop_assert_eq!(finer.to_string().parse::<HumanDuration>(), Ok(exact));
    }

    /// `<n><unit>...` parses to the sum of its parts, or `TooLarge` exactly when that overflows.
    #[test]
    fn durations_parse_to_the_sum_of_their_parts((text, total) in duration_parts(), pad in select(vec!["", " ", "\t"])) {
        let want = total.map(|ms| HumanDuration(Duration::from_millis(ms))).ok_or(DurationSyntax::TooLarge);
        prop_assert_eq!(format!("{pad}{text}{pad}").parse::<HumanDuration>(), want);
    }

    /// Any text: no panic, and whatever parses prints in a canonical form that parses back.
    #[test]
    fn any_duration_text_is_rejected_or_canonical(text in prop_oneof![value_text(), "[0-9a-z ]{0,12}"]) {
        if let Ok(duration) = text.parse::<HumanDuration>() {
            let printed = duration.to_string();
            prop_assert_eq!(printed.parse::<HumanDuration>(), Ok(duration));
            prop_assert_eq!(printed.parse::<HumanDuration>().map(|d| d.to_string()), Ok(printed.clone()));
        }
    }

    /// Sizes: every byte count prints in a form that parses back to it, and `<n> <unit>`
    /// parses to `n` times the unit or `TooLarge` exactly when that overflows.
    #[test]
    fn sizes_print_and_parse_back(bytes in prop_oneof![any::<u64>(), (0..1_000_000_u64, 0..40_u32).prop_map(|(n, s)| n << s)], (text, total) in size_parts()) {
        prop_assert_eq!(ByteSize(bytes).to_string().parse::<ByteSize>(), Ok(ByteSize(bytes)));
        prop_assert_eq!(text.parse::<ByteSize>(), total.map(ByteSize).ok_or(SizeSyntax::TooLarge));
    }

    /// Any text as a size: no panic; accepted ones print and parse back.
    #[test]
    fn any_size_text_is_rejected_or_round_trips(text in prop_oneof![value_text(), "[0-9KMGiB ]{0,10}"]) {
        if let Ok(size) = text.parse::<ByteSize>() {
            prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }
    }

    /// Any TOML-ish document: no panic; problems carry lines within the document, in order;
    /// a document with no problem gives a configuration that meets every constraint and reads
    /// back from its printed form.
    #[test]
    fn any_document_is_rejected_with_lines_or_reads_back(text in prop_oneof![4 => document(), 1 => any::<String>()]) {
        let (mut config, problems) = from_text(&text);
        let lines = text.lines().count() + 1;
        let mut previous = 0;
        for problem in &problems {
            let Origin::File { line, .. } = &problem.origin else {
                return Err(TestCaseError::fail(format!("not a file problem: {problem}")));
            };
            if let Some(line) = *line {
                prop_assert!((1..=lines).contains(&line) && line >= previous, "{} in {:?}", problem, text);
                previous = line;
            }
            prop_assert!(!problem.to_string().is_empty());
        }
        if problems.is_empty() {
            // What resolve does next when the file has no node name.
            if config.node_name.is_empty() {
                config.node_name = "node-1".to_owned();
            }
            check_reads_back(&config)?;
        }
    }

    /// Any flag and variable values, through clap and `resolve`: no panic; a flag beats its
    /// variable, which beats the default; an accepted configuration meets every constraint
    /// and reads back.
    #[test]
    fn any_flags_and_variables_resolve_or_report(
        flags in settings(5),
        vars in settings(6),
        node_name in setting(),
        hostname in setting(),
    ) {
        let mut argv = vec!["collector".to_owned()];
        argv.extend(flags.iter().map(|(field, value)| format!("{}={value}", field.flag())));
        let Ok(cli) = Cli::try_parse_from(&argv) else {
            // clap refuses some (a repeated flag, a bad boolean): that is its job, not ours.
            return Ok(());
        };
        let mut env: HashMap<String, String> =
            vars.into_iter().map(|(field, value)| (field.env().to_owned(), value)).collect();
        env.extend(node_name.map(|name| ("NODE_NAME".to_owned(), name)));
        let lookup = |name: &str| env.get(name).cloned();
        match resolve_with(&cli.run, &lookup, || hostname.clone()) {
            Ok(config) => {
                check_reads_back(&config)?;
                let var = lookup(Field::TombstoneTtl.env()).filter(|v| !v.is_empty());
                let ttl = cli.run.tombstone_ttl.clone().or(var).map(|text| text.parse::<HumanDuration>());
                prop_assert_eq!(config.tombstone_ttl, ttl.unwrap_or(Ok(DEFAULT_TOMBSTONE_TTL)).unwrap());
                let var = lookup(Field::Format.env()).filter(|v| !v.is_empty());
                let format = cli.run.format.clone().or(var);
                let want = if format.as_deref() == Some("text") { OutputFormat::Text } else { OutputFormat::Json };
                prop_assert_eq!(config.format, want);
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for problem in &problems {
                    prop_assert!(!matches!(problem.origin, Origin::File { .. }), "{}", problem);
                    prop_assert!(!problem.to_string().is_empty());
                }
            }
        }
    }
}
