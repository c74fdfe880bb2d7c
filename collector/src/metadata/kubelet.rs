//! Why the kubelet stopped a container, in its words: the message of the `Killing` Event it
//! records just before it asks the runtime to stop the container (`Container app failed
//! liveness probe, will be restarted`, `Stopping container app`). The kernel shows only that
//! the runtime asked; this tells a failed probe from a rollout.
//!
//! For a failed probe, the kubelet's last `Unhealthy` Event of that probe says what the probe got
//! (`Liveness probe failed: HTTP probe failed with statuscode: 500`): the Events expire within
//! the hour, the journal keeps both with the stop.
//!
//! Read on demand, for a container stopped while its pod was not being stopped (a deletion or
//! an eviction says why on the pod itself): one list in the pod's namespace, narrowed by a field
//! selector to the pod, repeated for a short while because the kubelet sends its Events
//! asynchronously and a container that exits at once on SIGTERM can beat it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::{Api, Client, api::ListParams};

use super::MetadataError;
use crate::clock::Timestamp;

/// What is asked: the container a stop ended, and when the runtime's first signal came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoppedContainer {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name.
    pub container: String,
    /// Whether it is an init container (its Events name `spec.initContainers{NAME}`).
    pub init: bool,
    /// When the runtime sent its stop signal.
    pub signal_time: Timestamp,
}

/// What the kubelet said about a stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletWord {
    /// Its `Killing` Event's message.
    pub killing: String,
    /// For a failed probe, its last `Unhealthy` Event of that probe before it.
    pub probe: Option<String>,
}

/// How much earlier than the stop signal a `Killing` Event may have been recorded: the kubelet
/// records it before the container's preStop hook, which runs first and takes at most the pod's
/// grace period (30 s by default). Older ones are about an earlier stop.
const LOOKBACK: Duration = Duration::from_secs(300);
/// How much later: `lastTimestamp` is in whole seconds.
const SLACK: Duration = Duration::from_secs(2);
/// How often to ask again while the Event has not arrived.
const RETRY: Duration = Duration::from_millis(200);

/// What the kubelet said about this stop, asked for until `wait` has passed. A `Killing` Event
/// recorded within [`SLACK`] of the signal answers at once; one recorded up to [`LOOKBACK`]
/// before it (a preStop hook ran in between) answers only once the wait is over.
pub(super) async fn kubelet_word(
    client: &Client,
    stopped: &StoppedContainer,
    wait: Duration,
    timeout: Duration,
) -> Result<Option<KubeletWord>, MetadataError> {
    let api: Api<Event> = Api::namespaced(client.clone(), &stopped.namespace);
    // Not narrowed by reason: the probe's Unhealthy Events come in the same list.
    let params = ListParams::default().fields(&format!("involvedObject.uid={}", stopped.pod_uid));
    let deadline = Instant::now() + wait;
    loop {
        let list = tokio::time::timeout(timeout, api.list(&params))
            .await
            .map_err(|_| MetadataError::KubeTimeout(timeout))?
            .map_err(|e| MetadataError::Kube(Box::new(e)))?;
        let found = pick(&list.items, stopped);
        let over = Instant::now() + RETRY > deadline;
        match found {
            Some((word, Fresh::Yes)) => return Ok(Some(word)),
            Some((word, Fresh::No)) if over => return Ok(Some(word)),
            _ if over => return Ok(None),
            _ => tokio::time::sleep(RETRY).await,
        }
    }
}

/// Whether a `Killing` Event was recorded within [`SLACK`] of the stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fresh {
    Yes,
    No,
}

/// The newest `Killing` Event of the container recorded in the window around the signal and,
/// when it says a probe failed, that probe's newest `Unhealthy` Event before it.
fn pick(events: &[Event], stopped: &StoppedContainer) -> Option<(KubeletWord, Fresh)> {
    let field_path = if stopped.init {
        format!("spec.initContainers{{{}}}", stopped.container)
    } else {
        format!("spec.containers{{{}}}", stopped.container)
    };
    let signal = i128::from(stopped.signal_time.0);
    let window = |at: i128| at >= signal - nanos(LOOKBACK) && at <= signal + nanos(SLACK);
    // The kubelet's Events of this container, with when each was last recorded (a repeat, the
    // same stop each time the container fails, moves lastTimestamp) and its message.
    let said = |reason: &'static str| {
        events
            .iter()
            .filter(move |e| e.reason.as_deref() == Some(reason))
            .filter(|e| e.involved_object.field_path.as_deref() == Some(field_path.as_str()))
            .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()).is_none_or(|c| c == "kubelet"))
            .filter_map(|e| {
                let at = e.last_timestamp.as_ref().or(e.first_timestamp.as_ref())?.0.as_nanosecond();
                let message = e.message.as_deref().map(str::trim_end).filter(|m| !m.is_empty())?;
                window(at).then(|| (at, message.to_owned()))
            })
    };
    let (at, killing) = said("Killing").max_by_key(|(at, _)| *at)?;
    let probe = ["liveness", "startup"]
        .into_iter()
        .find(|kind| killing.contains(&format!(" failed {kind} probe")))
        .and_then(|kind| {
            // The kubelet's own words: `Liveness probe failed: ...`, `Liveness probe errored ...`.
            let prefix = format!("{}{} probe ", kind[..1].to_uppercase(), &kind[1..]);
            said("Unhealthy")
                .filter(|(unhealthy_at, message)| *unhealthy_at <= at && message.starts_with(&prefix))
                .max_by_key(|(unhealthy_at, _)| *unhealthy_at)
                .map(|(_, message)| message)
        });
    let fresh = if at >= signal - nanos(SLACK) { Fresh::Yes } else { Fresh::No };
    Some((KubeletWord { killing, probe }, fresh))
}

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const SIGNAL: i64 = 1_795_862_400_500_000_000;

    fn stopped(init: bool) -> StoppedContainer {
        StoppedContainer {
            namespace: "shop".into(),
            pod_uid: "u1".into(),
            container: "app".into(),
            init,
            signal_time: Timestamp(SIGNAL),
        }
    }

    /// A `Killing` Event of `path`, last recorded `secs` after the signal's whole second.
    fn killing(path: &str, secs: i64, message: &str) -> Event {
        said("Killing", path, secs, message)
    }

    /// An Event of `reason` from the kubelet about `path`, last recorded `secs` after the
    /// signal's whole second.
    fn said(reason: &str, path: &str, secs: i64, message: &str) -> Event {
        let at = k8s_openapi::jiff::Timestamp::from_second(SIGNAL / 1_000_000_000 + secs).unwrap();
        Event {
            involved_object: ObjectReference { field_path: Some(path.into()), ..ObjectReference::default() },
            last_timestamp: Some(Time(at)),
            message: Some(message.into()),
            reason: Some(reason.into()),
            source: Some(EventSource { component: Some("kubelet".into()), host: Some("node".into()) }),
            ..Event::default()
        }
    }

    #[test]
    fn the_newest_killing_event_of_the_container_near_the_signal_answers() {
        let probe = "Container app failed liveness probe, will be restarted";
        let events = [
            killing("spec.containers{app}", -120, "Container app definition changed, will be restarted"),
            killing("spec.containers{app}", 0, probe),
            killing("spec.containers{sidecar}", 1, "Container sidecar failed liveness probe, will be restarted"),
            killing("spec.initContainers{app}", 1, "Stopping container app"),
        ];
        let word =
            |killing: &str, probe: Option<&str>| KubeletWord { killing: killing.into(), probe: probe.map(Into::into) };
        assert_eq!(pick(&events, &stopped(false)), Some((word(probe, None), Fresh::Yes)));
        assert_eq!(pick(&events, &stopped(true)), Some((word("Stopping container app", None), Fresh::Yes)));
    }

    #[test]
    fn an_older_event_answers_only_as_a_fallback_and_a_stale_or_later_one_never() {
        let changed = "Container app definition changed, will be restarted";
        // A preStop hook ran for a minute between the Event and the signal.
        let hook = [killing("spec.containers{app}", -60, changed)];
        let changed_word = KubeletWord { killing: changed.into(), probe: None };
        assert_eq!(pick(&hook, &stopped(false)), Some((changed_word, Fresh::No)));
        // One from an earlier stop, and one after this stop.
        let stale = [killing("spec.containers{app}", -301, changed), killing("spec.containers{app}", 3, changed)];
        assert_eq!(pick(&stale, &stopped(false)), None);
    }

    #[test]
    fn a_failed_probe_comes_with_what_the_probe_got_last() {
        let app = "spec.containers{app}";
        let events = [
            said("Unhealthy", app, -3, "Liveness probe failed: HTTP probe failed with statuscode: 503"),
            said("Unhealthy", app, -1, "Liveness probe failed: HTTP probe failed with statuscode: 500\n"),
            // Another probe, another container, and one after the stop: not the answer.
            said("Unhealthy", app, -1, "Readiness probe failed: connection refused"),
            said("Unhealthy", "spec.containers{sidecar}", 0, "Liveness probe failed: timeout"),
            said("Unhealthy", app, 1, "Liveness probe failed: later"),
            killing(app, 0, "Container app failed liveness probe, will be restarted"),
        ];
        let (word, _) = pick(&events, &stopped(false)).unwrap();
        assert_eq!(word.probe.as_deref(), Some("Liveness probe failed: HTTP probe failed with statuscode: 500"));
        // A startup probe's stop takes the startup probe's words, errors included.
        let startup = [
            said("Unhealthy", app, -1, "Startup probe errored and resulted in unknown state: rpc error"),
            killing(app, 0, "Container app failed startup probe, will be restarted"),
        ];
        let (word, _) = pick(&startup, &stopped(false)).unwrap();
        assert_eq!(word.probe.as_deref(), Some("Startup probe errored and resulted in unknown state: rpc error"));
        // A stop that was no probe's doing has none.
        let changed = [events[1].clone(), killing(app, 0, "Container app definition changed, will be restarted")];
        assert_eq!(pick(&changed, &stopped(false)).unwrap().0.probe, None);
    }

    #[test]
    fn another_component_or_an_empty_message_does_not_answer() {
        let mut other = killing("spec.containers{app}", 0, "Stopping container app");
        other.source = Some(EventSource { component: Some("collector".into()), host: None });
        let empty = killing("spec.containers{app}", 0, "");
        assert_eq!(pick(&[other, empty], &stopped(false)), None);
    }
}
