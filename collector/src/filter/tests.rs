use toml::de::DeTable;

use super::{parse::FilterProblem, *};
use crate::{
    clock::Timestamp,
    record::{Exit, Identity},
    recorder::ObjectReference,
};

fn exit(container: &str, code: u32, signal: Option<u32>, main: bool) -> Record {
    Record::Exit(Box::new(Exit {
        time: Timestamp(0),
        pid: 42,
        ppid: 1,
        comm: "envoy".into(),
        exit_code: code,
        signal,
        core_dumped: false,
        cgroup_id: 1,
        cgroup_path: None,
        oom_killed: false,
        sender: None,
        identity: Identity {
            namespace: Some("shop".into()),
            pod_name: Some("web-0".into()),
            container_name: Some(container.into()),
            ..Identity::default()
        },
        main_process: Some(main),
        stop: None,
        stop_request: None,
    }))
}

fn spec(reason: &str) -> EventSpec {
    EventSpec::new(ObjectReference::pod("shop", "web-0", "uid"), EventType::Warning, reason, "m")
}

/// The rules of a TOML document, and each problem as `rule: message`.
fn parsed(text: &str) -> (Vec<Rule>, Vec<String>) {
    let document = DeTable::parse(text).unwrap();
    let (key, value) = document.get_ref().iter().find(|(key, _)| key.get_ref() == "filters").unwrap();
    let (rules, problems) = parse::rules(value.get_ref(), key.span().start);
    (rules, problems.into_iter().map(|p| format!("{}: {}", p.rule, p.problem)).collect())
}

#[test]
fn globs_match_whole_names() {
    let glob = |pattern: &str| Glob(pattern.to_owned());
    assert!(glob("*-sidecar").matches("istio-sidecar"));
    assert!(glob("*-sidecar").matches("-sidecar"));
    assert!(!glob("*-sidecar").matches("istio-sidecar2"));
    assert!(glob("prod-*").matches("prod-eu"));
    assert!(!glob("prod-*").matches("staging-prod-eu"));
    assert!(glob("a?c").matches("abc") && !glob("a?c").matches("ac"));
    assert!(glob("*").matches("") && glob("**").matches("x"));
    assert!(glob("a*b*c").matches("axxbyyc") && !glob("a*b*c").matches("axxbyy"));
    assert!(glob("été").matches("été") && glob("?t?").matches("été"));
    // Pathological patterns stay fast.
    assert!(!glob(&"*a".repeat(50)).matches(&"a".repeat(40)));
}

#[test]
fn the_issues_example_drops_only_the_sidecars_sigterm_exit() {
    let (rules, problems) = parsed(
        r#"
[[filters]]
name = "ignore-sidecar-sigterm"
action = "drop"
match = { container = "*-sidecar", exit_code = 143 }
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    let filters = Filters::new(rules);
    let exited = spec("ContainerExited");
    assert_eq!(
        filters.decide(&exited, &exit("envoy-sidecar", 143, Some(15), true)),
        Verdict::Drop { rule: Some("ignore-sidecar-sigterm") }
    );
    assert_eq!(filters.decide(&exited, &exit("envoy-sidecar", 137, Some(9), true)), Verdict::Pass { matched: None });
    assert_eq!(filters.decide(&exited, &exit("app", 143, Some(15), true)), Verdict::Pass { matched: None });
}

#[test]
fn once_a_keep_rule_exists_only_what_it_matches_passes_and_drop_wins() {
    let (rules, problems) = parsed(
        r#"
[[filters]]
name = "shop-only"
action = "keep"
match = { namespace = "shop" }

[[filters]]
name = "no-envoy-crashes"
action = "drop"
match = { process = "env*", reason = "ProcessCrashed", signal = "SIGSEGV", main_process = false, type = "Warning" }
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    let filters = Filters::new(rules);
    let record = exit("app", 1, None, true);
    assert_eq!(filters.decide(&spec("ContainerExited"), &record), Verdict::Pass { matched: Some("shop-only") });
    let crash = exit("app", 139, Some(11), false);
    assert_eq!(filters.decide(&spec("ProcessCrashed"), &crash), Verdict::Drop { rule: Some("no-envoy-crashes") });
    let mut elsewhere = exit("app", 1, None, true);
    if let Record::Exit(exit) = &mut elsewhere {
        exit.identity.namespace = Some("other".into());
    }
    assert_eq!(filters.decide(&spec("ContainerExited"), &elsewhere), Verdict::Drop { rule: None });
    assert_eq!(Filters::default().decide(&spec("X"), &record), Verdict::Pass { matched: None });
}

#[test]
fn every_problem_is_named_by_its_rule_and_field() {
    let (rules, problems) = parsed(
        r#"
[[filters]]
name = "good"
action = "drop"
match = { container = "a" }

[[filters]]
name = "bad-values"
action = "delete"
match = { exit_code = 300, signal = "SIGNOPE", main_process = "yes", type = "Error", colour = "red" }

[[filters]]
action = "keep"
match = {}

[[filters]]
name = "good"
action = "drop"
match = { pod = 7 }
extra = 1
"#,
    );
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        problems,
        [
            r#""bad-values": `action`: expected "drop" or "keep", found "delete""#,
            r#""bad-values": `match.exit_code`: expected 0 to 255, found integer"#,
            r#""bad-values": `match.signal`: expected 1 to 31 or a name such as SIGTERM, found "SIGNOPE""#,
            r#""bad-values": `match.main_process`: expected true or false, found "yes""#,
            r#""bad-values": `match.type`: expected "Warning" or "Normal", found "Error""#,
            "\"bad-values\": unknown field `match.colour` (expected namespace, pod, container, labels, reason, \
             type, exit_code, signal, process, main_process)",
            "#3: no `name`",
            "#3: `match` is empty: a rule must say what it matches",
            r#""good": the name "good" is used by an earlier rule"#,
            r#""good": `match.pod`: expected a string, found integer"#,
            r#""good": unknown field `extra` (expected name, action, match)"#,
        ]
    );
    let (_, problems) = parsed("filters = 3");
    assert_eq!(problems, ["filters: `filters` must be an array of tables ([[filters]])"]);
    assert!(matches!(FilterProblem::Missing("name").to_string().as_str(), "no `name`"));
}

#[test]
fn a_labels_condition_needs_every_label_to_match_its_glob() {
    let (rules, problems) = parsed(
        "[[filters]]\nname = \"canary\"\naction = \"drop\"\nmatch = { labels = { app = \"web\", track = \"canary*\" } }\n\n\
         [[filters]]\nname = \"bad\"\naction = \"drop\"\nmatch = { labels = \"app=web\" }\n\n\
         [[filters]]\nname = \"bad-value\"\naction = \"drop\"\nmatch = { labels = { app = 1 } }\n",
    );
    assert_eq!(
        problems,
        [
            "\"bad\": `match.labels`: expected a table of label globs ({ app = \"web\" }), found \"app=web\"",
            "\"bad-value\": `match.labels.app`: expected a string, found integer",
        ]
    );
    // Only the valid rule: a file with problems never takes effect.
    let filters = Filters::new(rules.into_iter().filter(|rule| rule.name == "canary").collect());
    let with_labels = |labels: &[(&str, &str)]| {
        let mut record = exit("app", 1, None, true);
        if let Record::Exit(exit) = &mut record {
            exit.identity.pod_labels = Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        }
        record
    };
    let dropped = |record: &Record| matches!(filters.decide(&spec("ContainerExited"), record), Verdict::Drop { .. });
    assert!(dropped(&with_labels(&[("app", "web"), ("track", "canary-2"), ("tier", "x")])));
    assert!(!dropped(&with_labels(&[("app", "web"), ("track", "stable")])));
    assert!(!dropped(&with_labels(&[("app", "web")])), "a missing label does not match");
    assert!(!dropped(&exit("app", 1, None, true)), "no labels known");
}
