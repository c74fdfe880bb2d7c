use serde_json::{Value, json};

use super::*;

#[test]
fn the_body_is_the_event_and_the_record_as_trace_prints_it() {
    let record = br#"{"type":"exit","pid":7,"exit_code":3}"#;
    let body = request_body(&json!({"reason": "ContainerExited", "count": 1}), record).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"event": {"reason": "ContainerExited", "count": 1}, "records": [{"type": "exit", "pid": 7, "exit_code": 3}]})
    );
}

#[test]
fn empty_selectors_select_everything_and_namespaces_are_globs() {
    let hook = WebhookConfig {
        name: "audit".to_owned(),
        url: WebhookUrl("http://127.0.0.1:9/hook".parse().unwrap()),
        mode: Mode::Notify,
        reasons: Vec::new(),
        namespaces: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
        token_file: None,
    };
    assert!(hook.wants("OOMKilling", ""));
    assert!(hook.wants("ContainerExited", "shop"));
    let hook = WebhookConfig { namespaces: vec![Glob("prod-*".to_owned())], ..hook };
    assert!(hook.wants("OOMKilling", "prod-eu"));
    assert!(!hook.wants("OOMKilling", "production"));
}
