//! Nothing but the test targets: the harness is `collector_tests::cluster`, and
//! `kube/` beside this file is the Go module the cluster is built from.
