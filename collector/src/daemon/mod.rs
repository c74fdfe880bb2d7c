//! `collector run`: the daemon. Kernel records flow through the same stages as
//! `collector trace` (reader → decoder → resolver → identity), then become
//! kubelet-style events (events → recorder) that go to the registered handlers
//! (stdout, the local journal), each on its own thread, and from the journal's
//! outbox to the API server.

mod engine;
mod handover;
pub mod outbox;

use std::{
    collections::{HashMap, VecDeque},
    io,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
};

use self::{engine::Engine, handover::Handover, outbox::JournalOutbox};
use crate::{
    cgroup::{CgroupError, CgroupTree, Resolver, registry::RegistryConfig},
    config::{CriSocket, NodeHealthConfig, RunConfig, Sink, StreamSocket},
    doctor::{self, DoctorError},
    events::EventOptions,
    filter::Filters,
    health::{
        conditions::{ConditionConfig, NodeConditions},
        pressure::{self, PressureConfig},
    },
    identify::Identifier,
    metadata::{self, MetadataCache, MetadataConfig, MetadataError},
    probe::{KernelCounters, KernelReads, ProbeConfig, ProbeError, Probes},
    reader::RingReader,
    record::{PressureState, Record},
    recorder::{Recorder, RecorderConfig, RecorderError},
    resolve::RecordResolver,
    sinks::{
        ApiWrite,
        handler::{DEFAULT_QUEUE_CAPACITY, Handlers},
        journal::{self, ApiPath, Journal, JournalError, JournalHandler},
        kubernetes::{self, Cluster, KubeSink, Runner, RunnerConfig, SinkConfig, node_status},
        stdout::StdoutSink,
        stream::{Clients, StreamError, StreamHandler, StreamServer},
        webhook::{
            Mode,
            client::{ClientError, WebhookClient},
            mutate::{Mutator, Mutators},
            notify::NotifyHandler,
        },
    },
    telemetry::{
        KernelRecordType, Metrics, TelemetryError,
        http::{MetricsServer, Readiness},
        limit::WarnLimit,
    },
};

/// How often the kernel's counters, the API sink's and the caches' statistics are copied into the metrics.
const SYNC_EVERY: Duration = Duration::from_millis(250);
/// Writes the journal could not store, waiting to be sent from memory; beyond this they are
/// dropped and counted.
const FALLBACK_CAPACITY: usize = 1024;
/// How long a stopping daemon lets the handlers work through their queues (the journal has its
/// own, longer, time), then the API sink deliver what is queued; the rest waits in the journal
/// for the next start.
const DRAIN_ON_STOP: Duration = Duration::from_millis(500);

/// The longest a stopping daemon waits for mutate webhooks to answer for events in flight.
const MAX_MUTATE_DRAIN: Duration = Duration::from_secs(10);

/// Errors that stop the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// A check the daemon cannot run without failed (capabilities, BTF, tracefs, bpf()).
    #[error(transparent)]
    Startup(#[from] DoctorError),
    /// The kubeconfig or in-cluster configuration is unusable.
    #[error("cannot use the Kubernetes configuration: {0}")]
    Cluster(#[source] kubernetes::Error),
    /// The state dir cannot hold the lock and handover files that keep two daemons on one node
    /// from reporting a death twice.
    #[error("cannot use {dir} for the handover between daemons: {source}")]
    Handover {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The journal cannot be opened (a read-only or unwritable state dir, a corrupt file).
    #[error("cannot open the journal in {dir}: {source}")]
    Journal {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// The metrics endpoint cannot listen.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The metadata source cannot start (an explicit CRI socket is missing).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The probes cannot be loaded.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The cgroup trees cannot be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The recorder's configuration is invalid.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// The stream's socket cannot listen.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A webhook's client cannot be set up (https without CA certificates).
    #[error(transparent)]
    Webhook(#[from] ClientError),
    /// A thread of the daemon's own (the pressure sampler) could not start.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] io::Error),
    /// The ring buffer's reader could not start.
    #[error(transparent)]
    Reader(#[from] crate::reader::ReaderError),
    /// Reading the ring buffer or writing output failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Runs the daemon on `runtime` until SIGINT or SIGTERM, on a local task set (the identity
/// stage spawns lookups that are not `Send`).
///
/// A plain function rather than a future for the binary to poll: a future is compiled where it
/// is polled, so the daemon's async code is compiled here, with the library, and the binary's
/// crate, last in the release build, takes 3 s instead of 29 (README, "Build time").
#[expect(clippy::result_large_err, reason = "returned once, when the daemon ends, as `run` returns it")]
pub fn run_on(runtime: &tokio::runtime::Runtime, config: RunConfig) -> Result<(), DaemonError> {
    runtime.block_on(tokio::task::LocalSet::new().run_until(run(config)))
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: RunConfig) -> Result<(), DaemonError> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // The pressure sampler may hold half the descriptors open, one per container.
    let pressure_files = match raise_open_file_limit() {
        Ok(limit) => {
            tracing::debug!("open file limit: {limit}");
            usize::try_from(limit / 2).unwrap_or(usize::MAX)
        }
        Err(err) => {
            tracing::warn!("cannot raise the open file limit to its hard limit: {err}");
            pressure::DEFAULT_OPEN_FILES
        }
    };
    let cluster = kubernetes::connect(config.kubeconfig.as_deref()).await.map_err(DaemonError::Cluster)?;
    let client = match cluster {
        Cluster::Api(client) => Some(client),
        Cluster::NoCluster => None,
    };
    // What `collector doctor` checks, before anything else starts: every problem is
    // logged with its fix, and one the probes cannot load with stops the daemon here.
    let api = client.as_ref().map_or(doctor::ApiTarget::Skip, doctor::ApiTarget::Client);
    let report = doctor::check(&doctor::Inputs { cri: config.cri_socket.clone(), api, parse_btf: false }).await;
    report.log();
    if let Some(blocker) = report.into_blocker() {
        return Err(DaemonError::Startup(blocker));
    }
    let sinks = config.sinks.resolve(client.is_some());
    let to_api = sinks.contains(&Sink::Kubernetes);
    // Writes to the API server wait in the journal's outbox: they outlive outages and restarts.
    let journal = if sinks.contains(&Sink::Journal) || to_api {
        let limits =
            journal::JournalConfig { max_age: config.journal.max_age.0, max_bytes: config.journal.max_bytes.0 };
        let journal = Journal::open(&config.state_dir, limits)
            .map_err(|source| DaemonError::Journal { dir: config.state_dir.clone(), source })?;
        Some(Arc::new(Mutex::new(journal)))
    } else {
        None
    };

    // Every input the configuration names is checked before anything listens.
    let metadata = match &config.cri_socket {
        CriSocket::Off => None,
        cri => {
            let node_name = Some(config.node_name.clone());
            let metadata_config = MetadataConfig {
                cri: cri.clone(),
                node_name,
                kube: client.clone().map(metadata::KubeClient),
                tombstone_ttl: config.tombstone_ttl.0,
                ..MetadataConfig::default()
            };
            Some(MetadataCache::start(metadata_config).await?)
        }
    };

    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    let readiness = Readiness::new();
    let server = MetricsServer::bind(config.metrics_addr, Arc::clone(&metrics), readiness.clone()).await?;
    let metrics_addr = server.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::task::spawn_local(server.serve(stopped(stop_rx.clone())));

    let registry = RegistryConfig { tombstone_ttl: config.tombstone_ttl.0, ..RegistryConfig::default() };
    // Found once: the resolver and the pressure sampler read the same two trees.
    let (v2, memory) = (CgroupTree::discover()?, CgroupTree::discover_memory()?);
    let resolver = RecordResolver::new(Resolver::new(v2.clone(), registry)?, memory.clone());
    // Signal records tell the container runtime's stop signals from other senders' (see resolve::stop).
    let probe_config = ProbeConfig {
        ring_bytes: config.ring_buffer_bytes,
        cgroup_subtree: None,
        emit_signals: true,
        health: true,
        kernel_reads: KernelReads::Auto,
    };
    let (mut probes, ring) = Probes::load(&probe_config)?;
    for &(probe, attached) in probes.health() {
        metrics.set_probe_attached(probe, attached);
    }
    // Now that the probes are attached, a daemon still running here (a rolling
    // update) may hand over: from now on the deaths are this one's to report.
    let started = crate::clock::Timestamp::now();
    let me = format!("pid {} started {}", std::process::id(), started.0);
    let handover = std::fs::create_dir_all(&config.state_dir)
        .and_then(|()| Handover::start(&config.state_dir, me, started))
        .map_err(|source| DaemonError::Handover { dir: config.state_dir.clone(), source })?;
    if handover.took_over() {
        tracing::info!("collector: another collector runs on this node; this one reports deaths from now on");
    }
    for missing in probes.missing() {
        tracing::warn!("{missing}");
    }
    let mut reader = RingReader::new(ring)?;

    let wake = Arc::new(Notify::new());
    let sink = match (to_api, &client) {
        (false, _) => None,
        (true, _) if config.dry_run => Some(Arc::new(
            KubeSink::dry_run(Box::new(io::stdout()), SinkConfig::default()).with_metrics(Arc::clone(&metrics)),
        )),
        (true, Some(client)) => {
            Some(Arc::new(KubeSink::new(client.clone(), SinkConfig::default()).with_metrics(Arc::clone(&metrics))))
        }
        (true, None) => None,
    };
    // Writes the journal failed to store still go out, straight from memory.
    let (fallback, mut unstored) = tokio::sync::mpsc::channel::<ApiWrite>(FALLBACK_CAPACITY);
    if let (Some(sink), Some(journal)) = (&sink, &journal) {
        let runner = Runner::new(Arc::clone(sink), RunnerConfig::default()).wake_on(Arc::clone(&wake));
        let outbox = JournalOutbox::new(Arc::clone(journal));
        let stop = stopped(stop_rx.clone());
        tokio::task::spawn_local(async move { runner.run(&outbox, stop).await });
        let sink = Arc::clone(sink);
        tokio::task::spawn_local(async move {
            while let Some(write) = unstored.recv().await {
                sink.deliver(write).await;
            }
        });
    }

    // Every destination is a handler on its own thread behind its own queue: the loop below
    // never waits for a disk or a pipe.
    let mut handlers = Handlers::new(Arc::clone(&metrics));
    if sinks.contains(&Sink::Stdout) {
        handlers.register(Box::new(StdoutSink::new(config.format, io::stdout())), DEFAULT_QUEUE_CAPACITY)?;
    }
    let to_api = to_api && sink.is_some();
    if let Some(journal) = &journal {
        let api = to_api.then(|| ApiPath { wake: Arc::clone(&wake), fallback: fallback.clone() });
        let handler = JournalHandler::new(Arc::clone(journal), api, Arc::clone(&metrics), readiness.clone());
        handlers.register(Box::new(handler), DEFAULT_QUEUE_CAPACITY)?;
    }
    // Held to the end: dropping it closes the socket and every client.
    let stream_server = match &config.stream_socket {
        StreamSocket::Path(path) => {
            let clients = Clients::new(Arc::clone(&metrics));
            let server = StreamServer::bind(path, clients.clone())?;
            handlers.register(Box::new(StreamHandler::new(clients)), DEFAULT_QUEUE_CAPACITY)?;
            Some(server)
        }
        StreamSocket::Disabled => None,
    };
    let mut mutators = Vec::new();
    for webhook in &config.webhooks {
        let client = WebhookClient::new(webhook)?;
        match webhook.mode {
            Mode::Notify => {
                let handler = NotifyHandler::new(webhook.clone(), client, Arc::clone(&metrics))?;
                handlers.register(Box::new(handler), DEFAULT_QUEUE_CAPACITY)?;
            }
            Mode::Mutate => mutators.push(Mutator { config: webhook.clone(), client, warnings: WarnLimit::new() }),
        }
    }
    // Each event waits at most its webhooks' timeouts in all, and a stopping daemon that long.
    let mutate_drain = mutators.iter().map(|hook| hook.config.timeout.0).sum::<Duration>().min(MAX_MUTATE_DRAIN);
    let mutators = (!mutators.is_empty()).then(|| Mutators::new(mutators, Arc::clone(&metrics)));
    let (mutated, mut mutated_rx) = tokio::sync::mpsc::unbounded_channel();
    let health = &config.node_health;
    let conditions = NodeConditions::new(
        ConditionConfig {
            clear_after: health.condition_clear_after.0,
            oom_kills: health.frequent_oom_kills,
            oom_window: health.frequent_oom_window.0,
        },
        crate::clock::Timestamp::now(),
    );
    let (conditions_tx, conditions_rx) = watch::channel(conditions.conditions());
    // Written to the Node only where events go to the API server; saved for `collector events` always.
    let node_client = client.clone().filter(|_| to_api && !config.dry_run);
    tokio::task::spawn_local(node_status::run(
        node_client,
        config.node_name.clone(),
        conditions_rx,
        config.state_dir.clone(),
        Arc::clone(&metrics),
    ));
    let mut sampled =
        start_pressure(health, (v2, memory), pressure_files, Arc::clone(&metrics)).map_err(DaemonError::Thread)?;
    let mut engine = Engine {
        resolver,
        identifier: Identifier::new(metadata, config.metadata_wait.0),
        recorder: Recorder::new(RecorderConfig::new(config.component.clone(), config.node_name.clone()))?
            .with_metrics(Arc::clone(&metrics)),
        options: EventOptions { node_name: config.node_name.clone(), probed_reasons: probed_reasons(probes.health()) },
        emit_normal_exits: config.emit_normal_exits,
        filters: {
            metrics.set_filter_rules(config.filters.len());
            Filters::new(config.filters.clone())
        },
        handlers,
        mutators,
        mutated,
        to_api,
        metrics: Arc::clone(&metrics),
        wake,
        reported_unresolved: 0,
        reported_stops_evicted: 0,
        tombstone_ttl: config.tombstone_ttl.0,
        gone_pods: VecDeque::new(),
        pods_with_series: HashMap::new(),
        handover,
        conditions,
        conditions_tx,
    };
    engine.publish_conditions();
    readiness.set_ready(true);
    let names: Vec<String> = sinks.iter().map(|s| format!("{s:?}").to_lowercase()).collect();
    let stream = stream_server.as_ref().map_or_else(|| "off".to_owned(), |server| server.path().display().to_string());
    tracing::info!(
        "collector: running on node {}; sinks {}; metrics on {metrics_addr}; stream {stream}",
        config.node_name,
        names.join(",")
    );
    // Tests and scripts wait for this line.
    eprintln_ready(&format!(
        "collector: running; metrics on http://{metrics_addr}/metrics; sinks {}",
        names.join(",")
    ))?;

    let mut last_sync = Instant::now();
    // A record from an unknown cgroup waits for a walk of the tree on the walker's thread.
    let walk_done = engine.resolver.cgroups().walk_done();
    let result = loop {
        // At most SYNC_EVERY: an idle loop still copies the kernel's counters that often,
        // so a loss right after the reader resumes shows in /metrics within 250 ms.
        let wait = engine.identifier.next_wakeup(Instant::now()).min(SYNC_EVERY);
        tokio::select! {
            batch = reader.next_batch(|bytes| engine.handle(bytes)) => {
                probes.flush_logs();
                if let Err(err) = batch {
                    break Err(err);
                }
                engine.housekeeping(Instant::now(), false);
            }
            () = walk_done.notified() => engine.walk_finished(),
            () = tokio::time::sleep(wait) => engine.housekeeping(Instant::now(), false),
            Some(mutated) = mutated_rx.recv() => engine.on_mutated(mutated),
            Some(record) = sampled.recv() => engine.on_sampled(record),
            _ = sighup.recv() => engine.reload_filters(config.source_file.as_deref()),
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
        // Whichever branch woke: on a busy node records arrive more often than the sleep
        // ends, so work left to the sleep alone would never run.
        let now = Instant::now();
        if now.duration_since(last_sync) >= SYNC_EVERY {
            last_sync = now;
            if let Ok(counters) = probes.counters() {
                metrics.set_kernel_counters(lost_by_type(&counters), counters.read_failed);
                metrics.set_kernel_limited(limited_by_type(&counters));
            }
            engine.sync_cache_stats();
            engine.handover.poll();
        }
    };
    readiness.set_ready(false);
    reader.drain_now(|bytes| engine.handle(bytes));
    engine.housekeeping(Instant::now(), true);
    if let Ok(counters) = probes.counters() {
        metrics.set_kernel_counters(lost_by_type(&counters), counters.read_failed);
    }
    drop(probes);
    // Events still waiting on mutate webhooks get their answers (or time out) and are recorded.
    let deadline = tokio::time::Instant::now() + mutate_drain;
    while engine.mutators.as_ref().is_some_and(|mutators| mutators.in_flight() > 0) {
        tokio::select! {
            Some(mutated) = mutated_rx.recv() => engine.on_mutated(mutated),
            Some(record) = sampled.recv() => engine.on_sampled(record),
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    while let Ok(mutated) = mutated_rx.try_recv() {
        engine.on_mutated(mutated);
    }
    let Engine { handlers, to_api, wake, .. } = engine;
    // The handlers work through their queues (the journal commits what the kernel reported
    // last); one that is stuck (a stdout nobody reads) is left behind.
    let stuck = tokio::task::spawn_blocking(move || handlers.stop(DRAIN_ON_STOP)).await.unwrap_or_default();
    for (name, drain) in stuck {
        tracing::warn!("collector: the {name} handler did not finish its queue within {drain:?}");
    }
    if to_api {
        // Give queued writes a moment; what is left waits in the journal for the next start.
        wake.notify_one();
        tokio::time::sleep(DRAIN_ON_STOP).await;
    }
    let _ = stop_tx.send(true);
    tokio::task::yield_now().await;
    result.map_err(DaemonError::from)
}

fn eprintln_ready(line: &str) -> io::Result<()> {
    use std::io::Write as _;
    writeln!(io::stderr(), "{line}")
}

/// Resolves when the daemon is stopping.
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go programs do at start:
/// containerd 2 starts containers with a soft limit of 1,024, and the pressure sampler keeps a
/// file open per container. Returns the limit now in force.
fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit struct that lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit(2) reads one rlimit struct that lives on this stack frame.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Starts the pressure sampler on a thread of its own; its records come out of the
/// returned channel.
fn start_pressure(
    health: &NodeHealthConfig,
    (v2, memory): (CgroupTree, CgroupTree),
    open_files: usize,
    metrics: Arc<Metrics>,
) -> io::Result<tokio::sync::mpsc::Receiver<Record>> {
    let config = PressureConfig {
        resources: health.pressure_resources.clone(),
        threshold_percent: health.pressure_threshold.value(),
        window: health.pressure_window.0,
        open_files,
        ..PressureConfig::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(PRESSURE_QUEUE);
    if config.resources.is_empty() {
        // Turned off: the channel is closed at once and its branch of the loop never fires.
        return Ok(rx);
    }
    std::thread::Builder::new().name("pressure".to_owned()).spawn(move || {
        let read_error = || metrics.pressure_read_error();
        let send = |record: Record| {
            if let Record::Pressure(pressure) = &record {
                metrics.pressure_episode(pressure.resource.as_str(), pressure.state == PressureState::Stalled);
            }
            // Blocks only this thread, and only while the loop is behind; fails once it is gone.
            tx.blocking_send(record).is_ok()
        };
        pressure::run(config, &v2, &memory, send, read_error);
    })?;
    Ok(rx)
}

/// Pressure records waiting for the event loop; they come one per container per episode.
const PRESSURE_QUEUE: usize = 256;

/// The kernel log rules whose problem an attached probe reports with more to say (the pod): the
/// hung-task probe names the blocked task's pod, ext4's tracepoint the task that met the error.
fn probed_reasons(attached: &[(&'static str, bool)]) -> Vec<String> {
    let covers = |probe: &str| match probe {
        "sched_process_hang" => Some("TaskHung"),
        "ext4_error" => Some("Ext4Error"),
        _ => None,
    };
    attached.iter().filter(|(_, on)| *on).filter_map(|(probe, _)| covers(probe)).map(str::to_owned).collect()
}

/// The kernel's lost-record counters, by the metrics' record type.
fn lost_by_type(counters: &KernelCounters) -> Vec<(KernelRecordType, u64)> {
    let at = |kind: u32| counters.lost.get(collector_common::counter::lost(kind) as usize).copied().unwrap_or(0);
    KernelRecordType::ALL.iter().map(|&t| (t, at(t.kind()))).collect()
}

/// The kernel's rate-limited node-health counters, by the metrics' record type.
fn limited_by_type(counters: &KernelCounters) -> Vec<(KernelRecordType, u64)> {
    KernelRecordType::ALL.iter().map(|&t| (t, counters.limited.get(t.kind() as usize).copied().unwrap_or(0))).collect()
}
