//! The API server: that it answers, and that RBAC lets the collector do what
//! the daemon does, one SelfSubjectAccessReview per verb and resource.

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::{Api, Client, api::PostParams};

use super::{Check, chain};
use crate::{escape::escape_bytes, sinks::kubernetes};

/// How long the API server gets to answer each question.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One thing the daemon asks the API server to do, in every namespace (or, for
/// nodes, cluster-wide), in the core API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Access {
    verb: &'static str,
    resource: &'static str,
}

/// What the daemon does: it writes Events (a POST, then a PATCH for each
/// repeat), lists a pod's Events when the kubelet restarted one of its
/// containers (its `Killing` and `Unhealthy` Events), watches its node's pods
/// (a list, then a watch; a get per pod), reads its Node, and patches the
/// Node's status (node-problem-detector's conditions). A subresource is
/// written as RBAC writes it, `nodes/status`.
const ACCESS: [Access; 8] = [
    Access { verb: "create", resource: "events" },
    Access { verb: "patch", resource: "events" },
    Access { verb: "list", resource: "events" },
    Access { verb: "get", resource: "pods" },
    Access { verb: "list", resource: "pods" },
    Access { verb: "watch", resource: "pods" },
    Access { verb: "get", resource: "nodes" },
    Access { verb: "patch", resource: "nodes/status" },
];

/// What the API server answered for one [`Access`]: whether it is allowed, and
/// the authorizer's reason; or why it could not be asked.
type Answer = (Access, Result<(bool, String), String>);

/// The `api` check, and the `rbac` check once the server answers.
pub(super) async fn check(client: &Client) -> Vec<Check> {
    let version = match tokio::time::timeout(TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => info,
        Ok(Err(err)) => return vec![unreachable(&err)],
        Err(_) => {
            return vec![Check::fail(
                "api",
                format!("the API server did not answer GET /version within {TIMEOUT:?}"),
                REACH,
            )];
        }
    };
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    let answers = join_all(ACCESS.iter().map(|&access| ask(&reviews, access))).await;
    let version = escape_bytes(version.git_version.as_bytes());
    vec![Check::ok("api", format!("Kubernetes {version} answered")), rbac(&answers)]
}

const REACH: &str = "check the network path to the API server (the kubeconfig's server, or KUBERNETES_SERVICE_HOST in \
                     a pod) and that it trusts the collector's credentials";

/// Why a request failed: the API server's own answer (kube's text for it
/// repeats it with a debug dump), or the whole chain of causes.
fn cause(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("HTTP {} {}: {}", status.code, status.reason, status.message),
        other => chain(other),
    }
}

/// GET /version failed: the server refused, or could not be reached.
fn unreachable(err: &kube::Error) -> Check {
    let cause = escape_bytes(cause(err).as_bytes());
    match err {
        kube::Error::Api(_) => Check::fail(
            "api",
            format!("the API server refused GET /version: {cause}"),
            "check the collector's credentials (the pod's service account token, or the kubeconfig's user)",
        ),
        _ => Check::fail("api", format!("cannot reach the API server: {cause}"), REACH),
    }
}

/// A cluster is configured, but no client could be made from it.
pub(super) fn unusable(err: &kubernetes::Error) -> Check {
    Check::fail(
        "api",
        format!("cannot use the Kubernetes configuration: {}", escape_bytes(chain(err).as_bytes())),
        "check --kubeconfig (COLLECTOR_KUBECONFIG), or in a pod its service account token \
         (automountServiceAccountToken)",
    )
}

/// Neither `--kubeconfig` nor a service account.
pub(super) fn absent() -> Check {
    Check::warn(
        "api",
        "no cluster configured (no --kubeconfig, not in a pod): events go to stdout and the journal only",
        "pass --kubeconfig FILE, or run in a pod with a service account",
    )
}

async fn ask(reviews: &Api<SelfSubjectAccessReview>, access: Access) -> Answer {
    let (resource, subresource) =
        access.resource.split_once('/').map_or((access.resource, None), |(r, s)| (r, Some(s)));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                // The core group, every namespace (namespace "" for namespaced resources).
                group: Some(String::new()),
                namespace: Some(String::new()),
                resource: Some(resource.to_owned()),
                subresource: subresource.map(str::to_owned),
                verb: Some(access.verb.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = match tokio::time::timeout(TIMEOUT, reviews.create(&PostParams::default(), &review)).await {
        Ok(Ok(review)) => match review.status {
            Some(status) => Ok((status.allowed, status.reason.unwrap_or_default())),
            None => Err("the answer has no status".to_owned()),
        },
        Ok(Err(err)) => Err(cause(&err)),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    };
    (access, answer)
}

/// The `rbac` check from the answers: every denied verb named, with the rule to add.
pub(super) fn rbac(answers: &[Answer]) -> Check {
    const NAME: &str = "rbac";
    let named = |access: &Access| format!("{} {}", access.verb, access.resource);
    let mut denied = Vec::new();
    // What could not be asked, by cause: one failure (an unreachable server) is said once.
    let mut unasked: Vec<(&str, Vec<String>)> = Vec::new();
    // Verbs to grant, by resource, in the order of ACCESS.
    let mut grant: BTreeMap<usize, (&str, Vec<&str>)> = BTreeMap::new();
    for (index, (access, answer)) in answers.iter().enumerate() {
        match answer {
            Ok((true, _)) => {}
            Ok((false, reason)) => {
                let reason = if reason.is_empty() { String::new() } else { format!(" ({reason})") };
                denied.push(format!("{}{}", named(access), escape_bytes(reason.as_bytes())));
                let first = answers.iter().position(|(other, _)| other.resource == access.resource).unwrap_or(index);
                grant.entry(first).or_insert((access.resource, Vec::new())).1.push(access.verb);
            }
            Err(cause) => match unasked.iter_mut().find(|(known, _)| known == cause) {
                Some((_, names)) => names.push(named(access)),
                None => unasked.push((cause, vec![named(access)])),
            },
        }
    }
    if denied.is_empty() && unasked.is_empty() {
        let all: Vec<String> = answers.iter().map(|(access, _)| named(access)).collect();
        return Check::ok(NAME, format!("allowed: {}", all.join(", ")));
    }
    let mut details = Vec::new();
    let mut fixes = Vec::new();
    if !denied.is_empty() {
        details.push(format!("denied: {}", denied.join(", ")));
        let rules: Vec<String> =
            grant.values().map(|(resource, verbs)| format!("{} on {resource}", verbs.join(", "))).collect();
        fixes.push(format!(
            "grant {} (apiGroups [\"\"]) in the ClusterRole bound to the collector's service account (deploy/)",
            rules.join("; ")
        ));
    }
    if !unasked.is_empty() {
        let each: Vec<String> = unasked
            .iter()
            .map(|(cause, names)| format!("{}: {}", names.join(", "), escape_bytes(cause.as_bytes())))
            .collect();
        details.push(format!("could not ask about {}", each.join("; ")));
        fixes
            .push("check that the API server answers SelfSubjectAccessReviews (every user may create them)".to_owned());
    }
    Check::fail(NAME, details.join("; "), fixes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_double::TestApi;

    use crate::{doctor::Status, sinks::kubernetes::tests::client};

    fn allowed(access: Access) -> Answer {
        (access, Ok((true, String::new())))
    }

    #[test]
    fn every_verb_allowed_is_ok() {
        let answers: Vec<Answer> = ACCESS.into_iter().map(allowed).collect();
        let check = rbac(&answers);
        assert_eq!(check.status, Status::Ok);
        assert_eq!(
            check.detail,
            "allowed: create events, patch events, list events, get pods, list pods, watch pods, get nodes, patch nodes/status"
        );
    }

    #[test]
    fn each_denied_verb_is_named_with_the_rule_to_add() {
        let mut answers: Vec<Answer> = ACCESS.into_iter().map(allowed).collect();
        answers[1].1 = Ok((false, String::new()));
        answers[5].1 = Ok((false, "no RBAC policy matched".to_owned()));
        answers[4].1 = Ok((false, String::new()));
        let check = rbac(&answers);
        assert_eq!(check.status, Status::Fail);
        assert!(!check.blocks_startup(), "the daemon journals what it cannot send");
        assert_eq!(
            check.problem_line(),
            "rbac: denied: patch events, list pods, watch pods (no RBAC policy matched); fix: grant patch on events; \
             list, watch on pods (apiGroups [\"\"]) in the ClusterRole bound to the collector's service account \
             (deploy/)"
        );
    }

    #[test]
    fn a_question_that_could_not_be_asked_is_a_failure_with_its_cause() {
        let mut answers: Vec<Answer> = ACCESS.into_iter().map(allowed).collect();
        let forbidden = "HTTP 403 Forbidden: selfsubjectaccessreviews is forbidden";
        answers[0].1 = Err(forbidden.to_owned());
        answers[3].1 = Err("no answer within 5s".to_owned());
        answers[4].1 = Err(forbidden.to_owned());
        answers[6].1 = Ok((false, String::new()));
        assert_eq!(
            rbac(&answers).problem_line(),
            "rbac: denied: get nodes; could not ask about create events, list pods: HTTP 403 Forbidden: \
             selfsubjectaccessreviews is forbidden; get pods: no answer within 5s; fix: grant get on nodes \
             (apiGroups [\"\"]) in the ClusterRole bound to the collector's service account (deploy/); check that \
             the API server answers SelfSubjectAccessReviews (every user may create them)"
        );
    }

    #[tokio::test]
    async fn reviews_go_to_the_api_server_one_per_verb() {
        let mut api = TestApi::start().await;
        api.deny("patch", "events");
        let client = client(&mut api).await;
        let checks = check(&client).await;
        assert_eq!(checks.len(), 2);
        assert_eq!((checks[0].name, checks[0].status), ("api", Status::Ok));
        assert_eq!(checks[0].detail, "Kubernetes v1.33.0-test answered");
        assert_eq!(
            checks[1].problem_line(),
            "rbac: denied: patch events (denied by the test); fix: grant patch on events (apiGroups [\"\"]) in the \
             ClusterRole bound to the collector's service account (deploy/)"
        );
        let mut asked: Vec<String> = api
            .requests()
            .iter()
            .filter(|request| request.path.starts_with("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"))
            .map(|request| {
                let attributes = &request.body["spec"]["resourceAttributes"];
                assert_eq!((attributes["group"].as_str(), attributes["namespace"].as_str()), (Some(""), Some("")));
                let subresource = attributes["subresource"].as_str().map_or(String::new(), |s| format!("/{s}"));
                format!(
                    "{} {}{subresource}",
                    attributes["verb"].as_str().unwrap(),
                    attributes["resource"].as_str().unwrap()
                )
            })
            .collect();
        asked.sort();
        assert_eq!(
            asked,
            [
                "create events",
                "get nodes",
                "get pods",
                "list events",
                "list pods",
                "patch events",
                "patch nodes/status",
                "watch pods"
            ]
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_server_fails_with_the_whole_cause() {
        let mut api = TestApi::start().await;
        let client = client(&mut api).await;
        api.stop().await;
        let checks = check(&client).await;
        assert_eq!(checks.len(), 1, "no rbac check without an answer: {checks:?}");
        assert_eq!(checks[0].status, Status::Fail);
        // kube's error, hyper's, and the socket's, in that order.
        assert!(checks[0].detail.starts_with("cannot reach the API server: ServiceError: "), "{checks:?}");
        assert!(checks[0].detail.ends_with("Connection refused (os error 111)"), "{checks:?}");
    }
}
