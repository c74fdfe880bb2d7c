//! Webhooks on real containers against loopback HTTP servers: a notify webhook gets each event it
//! selects with the record behind it and is tried again after 500s; mutate webhooks suppress,
//! annotate, and a bad answer changes nothing; a webhook that hangs delays no other handler and
//! the kernel loses nothing. The examples in docs/plugins.md are these.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::time::{Duration, Instant};

use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir, journal_occurrences, samples};
use collector_tests::kubelet::{Pod, PodSpec};
use collector_tests::privileged;
use collector_tests::webhook::{HookServer, Reply};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(15);

fn of_pod<'a>(events: &'a [Value], pod: &Pod) -> Vec<&'a Value> {
    events.iter().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).collect()
}

fn start(containerd: &Containerd, state: &StateDir, config: &str) -> Daemon {
    let file = state.path().join("collector.toml");
    std::fs::write(&file, config).unwrap();
    let socket = containerd.address().display().to_string();
    Daemon::start(state, &["stdout", "journal"], &socket, &["--config", &file.display().to_string()]).unwrap()
}

#[test]
fn a_notify_webhook_gets_each_selected_event_with_its_record_and_is_retried_after_500s() {
    if !privileged("a_notify_webhook_gets_each_selected_event_with_its_record_and_is_retried_after_500s") {
        return;
    }
    // The first two requests fail with 500; the third is taken.
    let server = HookServer::start(Box::new(|n, _| {
        if n < 2 { Reply::Answer(500, "{}".into()) } else { Reply::Answer(200, "{}".into()) }
    }))
    .unwrap();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("webhook-notify").unwrap();
    let token = state.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let config = format!(
        "[[webhooks]]\nname = \"audit\"\nurl = \"{}\"\nmode = \"notify\"\nreasons = [\"ContainerExited\"]\n\
         namespaces = [\"shop\", \"prod-*\"]\ntimeout = \"2s\"\ntoken_file = \"{}\"\n",
        server.url(),
        token.display()
    );
    let daemon = start(&containerd, &state, &config);
    let elsewhere =
        containerd.cri().run_pod(PodSpec { namespace: "dev".to_owned(), ..PodSpec::unique("other") }).unwrap();
    let pod = containerd.cri().run_pod(PodSpec { namespace: "shop".to_owned(), ..PodSpec::unique("web") }).unwrap();
    containerd.cri().exit_with(&elsewhere, "app", 4, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "app", 3, TIMEOUT).unwrap();

    let requests = server.wait_for(3, TIMEOUT).unwrap();
    daemon
        .wait_metric("collector_webhook_requests_total", "webhook=\"audit\",mode=\"notify\",outcome=\"ok\"", 1, TIMEOUT)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let requests_now = server.requests();
    assert_eq!(requests_now.len(), 3, "the dev namespace's event is not selected: {requests_now:#?}");
    // The same body each time: the event as the API server gets it, and the record behind it.
    assert_eq!(requests[0], requests[2]);
    let event = &requests[2]["event"];
    assert_eq!(event["reason"], "ContainerExited");
    assert_eq!(event["message"], "Container app exited with code 3");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["uid"], pod.spec.uid.as_str());
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{app}");
    assert_eq!(event["count"], 1);
    let records = requests[2]["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["type"], "exit");
    assert_eq!(records[0]["exit_code"], 3);
    assert_eq!(records[0]["namespace"], "shop");
    assert_eq!(records[0]["container_name"], "app");
    assert_eq!(records[0]["main_process"], true);

    let metrics = daemon.metrics().unwrap();
    assert!(
        samples(&metrics, "collector_webhook_requests_total")
            .contains(&"collector_webhook_requests_total{webhook=\"audit\",mode=\"notify\",outcome=\"http_error\"} 2"),
        "{metrics}"
    );
    assert!(
        samples(&metrics, "collector_webhook_retries_total")
            .contains(&"collector_webhook_retries_total{webhook=\"audit\"} 2"),
        "{metrics}"
    );
    assert!(
        samples(&metrics, "collector_webhook_latency_seconds_count")
            .contains(&"collector_webhook_latency_seconds_count{webhook=\"audit\"} 3"),
        "{metrics}"
    );
    // The token from its file on every request, and never in the log.
    assert_eq!(server.authorizations(), vec![Some("Bearer s3cret-token".to_owned()); 3]);
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(!stopped.stderr.contains("s3cret"), "{}", stopped.stderr);
}

#[test]
fn mutate_webhooks_suppress_annotate_and_a_bad_answer_changes_nothing() {
    if !privileged("mutate_webhooks_suppress_annotate_and_a_bad_answer_changes_nothing") {
        return;
    }
    // docs/plugins.md: a gate that suppresses exits with code 7, a webhook that adds a ticket.
    let gate = HookServer::start(Box::new(|_, body| {
        let exit_code = &body["records"][0]["exit_code"];
        Reply::Answer(200, json!({"allow": exit_code != 7}).to_string())
    }))
    .unwrap();
    let annotate = HookServer::start(Box::new(|_, _| {
        Reply::Answer(
            200,
            json!({"allow": true, "annotations": {"example.com/ticket": "OPS-1"}, "message_suffix": "(see runbook)"})
                .to_string(),
        )
    }))
    .unwrap();
    let broken = HookServer::start(Box::new(|_, _| Reply::Answer(200, "yes".into()))).unwrap();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("webhook-mutate").unwrap();
    let config = format!(
        "[[webhooks]]\nname = \"gate\"\nurl = \"{}\"\nmode = \"mutate\"\n\n\
         [[webhooks]]\nname = \"ticket\"\nurl = \"{}\"\nmode = \"mutate\"\n\n\
         [[webhooks]]\nname = \"broken\"\nurl = \"{}\"\nmode = \"mutate\"\n",
        gate.url(),
        annotate.url(),
        broken.url()
    );
    let daemon = start(&containerd, &state, &config);
    let pod = containerd.cri().run_pod(PodSpec { namespace: "shop".to_owned(), ..PodSpec::unique("web") }).unwrap();
    containerd.cri().exit_with(&pod, "quiet", 7, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "app", 3, TIMEOUT).unwrap();

    daemon.wait_for(TIMEOUT, |events| !of_pod(events, &pod).is_empty()).unwrap();
    daemon
        .wait_metric("collector_webhook_decisions_total", "webhook=\"broken\",decision=\"failed_open\"", 1, TIMEOUT)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let events = of_pod(&daemon.events(), &pod).into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["message"], "Container app exited with code 3 (see runbook)");
    assert_eq!(events[0]["metadata"]["annotations"], json!({"example.com/ticket": "OPS-1"}));
    // The later webhook is shown what the earlier ones made of the event.
    let shown = broken.wait_for(1, TIMEOUT).unwrap();
    assert_eq!(shown[0]["event"]["message"], "Container app exited with code 3 (see runbook)");
    assert_eq!(shown[0]["event"]["metadata"]["annotations"]["example.com/ticket"], "OPS-1");
    assert_eq!(gate.requests().len(), 2);
    assert_eq!(annotate.requests().len(), 1, "a suppressed event goes no further");

    let metrics = daemon.metrics().unwrap();
    for want in [
        "collector_webhook_decisions_total{webhook=\"gate\",decision=\"suppressed\"} 1",
        "collector_webhook_decisions_total{webhook=\"gate\",decision=\"allowed\"} 1",
        "collector_webhook_decisions_total{webhook=\"ticket\",decision=\"annotated\"} 1",
        "collector_webhook_requests_total{webhook=\"broken\",mode=\"mutate\",outcome=\"bad_answer\"} 1",
        "collector_events_dropped_total{cause=\"suppressed\"} 1",
    ] {
        let name = want.split('{').next().unwrap();
        assert!(samples(&metrics, name).contains(&want), "no {want}:\n{metrics}");
    }
    assert!(
        daemon.stderr().contains(
            "webhook broken: the answer is not a JSON object with a boolean `allow`: expected value at line 1 column 1; \
             the ContainerExited event goes on unchanged"
        ),
        "{}",
        daemon.stderr()
    );
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    // The journal keeps what went out, annotations and all; the suppressed death is not an event.
    let occurrences = journal_occurrences(state.path(), &["--pod", &pod.spec.name]).unwrap();
    assert_eq!(occurrences.len(), 1, "{occurrences:#?}");
}

#[test]
fn a_webhook_that_hangs_delays_no_other_handler_and_the_kernel_loses_nothing() {
    if !privileged("a_webhook_that_hangs_delays_no_other_handler_and_the_kernel_loses_nothing") {
        return;
    }
    let hung_notify = HookServer::start(Box::new(|_, _| Reply::Hang)).unwrap();
    let hung_mutate = HookServer::start(Box::new(|_, _| Reply::Hang)).unwrap();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("webhook-hung").unwrap();
    let config = format!(
        "[[webhooks]]\nname = \"hung\"\nurl = \"{}\"\ntimeout = \"5s\"\n\n\
         [[webhooks]]\nname = \"slow-gate\"\nurl = \"{}\"\nmode = \"mutate\"\ntimeout = \"300ms\"\n",
        hung_notify.url(),
        hung_mutate.url()
    );
    let daemon = start(&containerd, &state, &config);
    let pod = containerd.cri().run_pod(PodSpec { namespace: "shop".to_owned(), ..PodSpec::unique("web") }).unwrap();
    // Fewer than client-go's 10 similar events, after which messages are combined.
    const DEATHS: u32 = 9;
    let started = Instant::now();
    for n in 0..DEATHS {
        containerd.cri().exit_with(&pod, &format!("app-{n}"), 1 + n, TIMEOUT).unwrap();
    }
    // Every death reaches stdout: each waited 300 ms for the mutate webhook, none for the other.
    daemon.wait_for(TIMEOUT, |events| of_pod(events, &pod).len() >= DEATHS as usize).unwrap();
    let took = started.elapsed();
    let events = daemon.events();
    let codes: Vec<String> = of_pod(&events, &pod).iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.len(), DEATHS as usize, "{codes:#?}");
    for n in 0..DEATHS {
        assert!(codes.contains(&format!("Container app-{n} exited with code {}", 1 + n)), "{codes:#?}");
    }
    daemon
        .wait_metric(
            "collector_webhook_decisions_total",
            "webhook=\"slow-gate\",decision=\"failed_open\"",
            u64::from(DEATHS),
            TIMEOUT,
        )
        .unwrap();
    // The notify webhook holds the first event (5 s a try): the rest wait in its queue.
    assert!(hung_notify.requests().len() <= 2, "{took:?}");
    let metrics = daemon.metrics().unwrap();
    let lost = samples(&metrics, "collector_kernel_records_lost_total");
    assert!(!lost.is_empty() && lost.iter().all(|line| line.ends_with(" 0")), "{metrics}");
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("the webhook/hung handler did not finish its queue"), "{}", stopped.stderr);
    let occurrences = journal_occurrences(state.path(), &["--pod", &pod.spec.name]).unwrap();
    assert_eq!(occurrences.len(), DEATHS as usize);
}
