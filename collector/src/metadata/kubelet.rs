//! Why the kubelet stopped a container, in its words: the message of the `Killing` Event it
//! records just before it asks the runtime to stop the container (`Container app failed
//! liveness probe, will be restarted`, `Stopping container app`). The kernel shows only that
//! the runtime asked; this tells a failed probe from a rollout.
//!
//! Read on demand, for a container stopped while its pod was not being stopped (a deletion or
//! an eviction says why on the pod itself): one list in the pod's namespace, narrowed by field
//! selectors to the pod and the reason, repeated for a short while because the kubelet sends its
//! Events asynchronously and a container that exits at once on SIGTERM can beat it.

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

/// How much earlier than the stop signal a `Killing` Event may have been recorded: the kubelet
/// records it before the container's preStop hook, which runs first and takes at most the pod's
/// grace period (30 s by default). Older ones are about an earlier stop.
const LOOKBACK: Duration = Duration::from_secs(300);
/// How much later: `lastTimestamp` is in whole seconds.
const SLACK: Duration = Duration::from_secs(2);
/// How often to ask again while the Event has not arrived.
const RETRY: Duration = Duration::from_millis(200);

/// The kubelet's `Killing` message for this stop, asked for until `wait` has passed. A message
/// recorded within [`SLACK`] of the signal answers at once; one recorded up to [`LOOKBACK`]
/// before it (a preStop hook ran in between) answers only once the wait is over.
pub(super) async fn killing_message(
    client: &Client,
    stopped: &StoppedContainer,
    wait: Duration,
    timeout: Duration,
) -> Result<Option<String>, MetadataError> {
    let api: Api<Event> = Api::namespaced(client.clone(), &stopped.namespace);
    let params = ListParams::default().fields(&format!("involvedObject.uid={},reason=Killing", stopped.pod_uid));
    let deadline = Instant::now() + wait;
    loop {
        let list = tokio::time::timeout(timeout, api.list(&params))
            .await
            .map_err(|_| MetadataError::KubeTimeout(timeout))?
            .map_err(|e| MetadataError::Kube(Box::new(e)))?;
        let found = pick(&list.items, stopped);
        let over = Instant::now() + RETRY > deadline;
        match found {
            Some((message, Fresh::Yes)) => return Ok(Some(message)),
            Some((message, Fresh::No)) if over => return Ok(Some(message)),
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

/// The newest `Killing` Event of the container recorded in the window around the signal.
fn pick(events: &[Event], stopped: &StoppedContainer) -> Option<(String, Fresh)> {
    let field_path = if stopped.init {
        format!("spec.initContainers{{{}}}", stopped.container)
    } else {
        format!("spec.containers{{{}}}", stopped.container)
    };
    let signal = i128::from(stopped.signal_time.0);
    let nanos = |d: Duration| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX);
    events
        .iter()
        .filter(|e| e.involved_object.field_path.as_deref() == Some(field_path.as_str()))
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()).is_none_or(|c| c == "kubelet"))
        .filter_map(|e| {
            // A repeat (the same stop each time the container fails) moves lastTimestamp.
            let at = e.last_timestamp.as_ref().or(e.first_timestamp.as_ref())?.0.as_nanosecond();
            let message = e.message.clone().filter(|m| !m.is_empty())?;
            (at >= signal - nanos(LOOKBACK) && at <= signal + nanos(SLACK)).then_some((at, message))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(at, message)| (message, if at >= signal - nanos(SLACK) { Fresh::Yes } else { Fresh::No }))
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
        let at = k8s_openapi::jiff::Timestamp::from_second(SIGNAL / 1_000_000_000 + secs).unwrap();
        Event {
            involved_object: ObjectReference { field_path: Some(path.into()), ..ObjectReference::default() },
            last_timestamp: Some(Time(at)),
            message: Some(message.into()),
            reason: Some("Killing".into()),
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
        assert_eq!(pick(&events, &stopped(false)), Some((probe.to_owned(), Fresh::Yes)));
        assert_eq!(pick(&events, &stopped(true)), Some(("Stopping container app".to_owned(), Fresh::Yes)));
    }

    #[test]
    fn an_older_event_answers_only_as_a_fallback_and_a_stale_or_later_one_never() {
        let changed = "Container app definition changed, will be restarted";
        // A preStop hook ran for a minute between the Event and the signal.
        let hook = [killing("spec.containers{app}", -60, changed)];
        assert_eq!(pick(&hook, &stopped(false)), Some((changed.to_owned(), Fresh::No)));
        // One from an earlier stop, and one after this stop.
        let stale = [killing("spec.containers{app}", -301, changed), killing("spec.containers{app}", 3, changed)];
        assert_eq!(pick(&stale, &stopped(false)), None);
    }

    #[test]
    fn another_component_or_an_empty_message_does_not_answer() {
        let mut other = killing("spec.containers{app}", 0, "Stopping container app");
        other.source = Some(EventSource { component: Some("collector".into()), host: None });
        let empty = killing("spec.containers{app}", 0, "");
        assert_eq!(pick(&[other, empty], &stopped(false)), None);
    }
}
