//! User-space throughput of `collector trace`: decode → resolve → filter → output, on one core.
//!
//! Run by `cargo xtask bench` (or `cargo bench -p collector --bench pipeline -- --secs 2`). The
//! records are synthetic `ExitRecord`s from 1,000 container cgroups (100 pods of 10) in a fake
//! cgroup tree in a temporary directory, so every lookup hits the registry as on a busy node.
//! Prints one JSON line per stage: `{"stage":"...","events":N,"secs":S,"per_sec":R}`.

use std::{
    hint::black_box,
    io::{self, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use collector::{
    cgroup::{CgroupTree, Resolver, registry::RegistryConfig},
    decode::decode,
    identify::Identifier,
    output::{Format, Output},
    resolve::RecordResolver,
    trace::{Filter, Pipeline, TraceArgs},
};
use collector_common::{COMM_LEN, ExitRecord, Header, SignalInfo, SignaledExit, exit_flags, kind};

/// Records handled between two `end_batch` calls, as the reader hands them over after a wake-up.
const BATCH: usize = 64;
const PODS: usize = 100;
const CONTAINERS_PER_POD: usize = 10;

/// `collector trace`'s options, parsed as the command line would (so new options keep their defaults).
#[derive(Parser)]
struct TraceCli {
    #[command(flatten)]
    trace: TraceArgs,
}

/// A temporary fake cgroup tree, removed on drop.
struct FakeTree(PathBuf);

impl Drop for FakeTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl FakeTree {
    /// `kubepods/besteffort/pod<uid>/<64 hex>` directories, and their inode numbers (cgroup ids).
    fn create() -> Result<(Self, Vec<u64>)> {
        let root = std::env::temp_dir().join(format!("collector-bench-pipeline-{}", std::process::id()));
        let tree = Self(root);
        let mut ids = Vec::with_capacity(PODS * CONTAINERS_PER_POD);
        for pod in 0..PODS {
            let pod_dir = tree.0.join(format!("kubepods/besteffort/podbe0c0000-0000-4000-8000-{pod:012x}"));
            for container in 0..CONTAINERS_PER_POD {
                let dir = pod_dir.join(format!("{:064x}", pod * CONTAINERS_PER_POD + container + 1));
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                ids.push(std::fs::metadata(&dir)?.ino());
            }
        }
        Ok((tree, ids))
    }

    fn root(&self) -> &Path {
        &self.0
    }
}

/// Synthetic exit records as the kernel would write them: normal exits, failures and SIGKILLs.
fn records(ids: &[u64]) -> Vec<Vec<u8>> {
    let names: [&[u8]; 4] = [b"nginx", b"python3", b"sh", b"java-worker-thr"];
    (0..4096_u32)
        .map(|i| {
            let mut comm = [0_u8; COMM_LEN];
            let name = names[i as usize % names.len()];
            comm[..name.len()].copy_from_slice(name);
            let (exit_status, flags, sig) = match i % 8 {
                0 => (9, exit_flags::SIGNAL_KNOWN, 9), // SIGKILL, sender known
                1 => (1 << 8, 0, 0),
                _ => (0, 0, 0),
            };
            let exit = ExitRecord {
                header: Header { kind: kind::EXIT, _pad: 0, boot_ns: 1_000_000_000 + u64::from(i) * 1_000 },
                cgroup_id: ids[i as usize % ids.len()],
                pid: 10_000 + i,
                ppid: 9_999,
                tid: 10_000 + i,
                exit_status,
                comm,
                flags,
                _pad: 0,
            };
            let record = SignaledExit {
                exit,
                signal: SignalInfo {
                    sender_cgroup_id: ids[0],
                    sig,
                    code: 0,
                    sender_pid: 4_242,
                    target_pid: 10_000 + i,
                    group: 1,
                    result: 0,
                    sender_comm: *b"kubelet\0\0\0\0\0\0\0\0\0",
                    target_comm: comm,
                },
            };
            // As the kernel writes them: the signal follows only an exit that says it is known.
            let len =
                if flags & exit_flags::SIGNAL_KNOWN != 0 { size_of::<SignaledExit>() } else { size_of::<ExitRecord>() };
            // SAFETY: SignaledExit is #[repr(C)] with explicit padding fields, so all its bytes are
            // initialised, and `len` is at most its size.
            let bytes = unsafe { std::slice::from_raw_parts((&raw const record).cast::<u8>(), len) };
            bytes.to_vec()
        })
        .collect()
}

/// Runs `batch` over the records for `secs`, returning events handled and elapsed seconds.
fn measure(secs: f64, records: &[Vec<u8>], mut handle: impl FnMut(&[Vec<u8>]) -> Result<()>) -> Result<(u64, f64)> {
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut events = 0_u64;
    'outer: loop {
        for batch in records.chunks(BATCH) {
            handle(batch)?;
            events += batch.len() as u64;
            if start.elapsed() >= budget {
                break 'outer;
            }
        }
    }
    Ok((events, start.elapsed().as_secs_f64()))
}

fn pipeline<W: Write>(tree: &Path, filter: Filter, format: Format, out: W) -> Result<Pipeline<W>> {
    let resolver =
        RecordResolver::new(Resolver::new(CgroupTree::at(tree), RegistryConfig::default())?, CgroupTree::at(tree));
    // No runtime to ask: names stay unknown and nothing waits, as with `--cri-socket none`.
    let identifier = Identifier::new(None, Duration::ZERO);
    Ok(Pipeline::new(resolver, identifier, filter, Output::new(format, out)))
}

fn run_pipeline<W: Write>(secs: f64, records: &[Vec<u8>], mut pipeline: Pipeline<W>) -> Result<(u64, f64)> {
    let result = measure(secs, records, |batch| {
        for bytes in batch {
            pipeline.handle(bytes);
        }
        pipeline.end_batch().context("output failed")
    })?;
    let stats = pipeline.stats();
    if stats.malformed != 0 {
        bail!("{} synthetic records did not decode", stats.malformed);
    }
    Ok(result)
}

fn report(stage: &str, (events, secs): (u64, f64)) {
    let per_sec = events as f64 / secs;
    println!("{}", serde_json::json!({"stage": stage, "events": events, "secs": secs, "per_sec": per_sec.round()}));
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut secs = 2.0_f64;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().context("--secs needs a value")?.parse().context("--secs")?,
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => bail!("unknown argument {other}; usage: pipeline [--secs S]"),
        }
    }
    let (tree, ids) = FakeTree::create()?;
    let records = records(&ids);

    report(
        "decode",
        measure(secs, &records, |batch| {
            for bytes in batch {
                black_box(decode(black_box(bytes)).ok());
            }
            Ok(())
        })?,
    );
    // A pid filter that matches nothing: every record is decoded and resolved, none is encoded.
    let args = TraceCli::try_parse_from(["trace", "--pid", "0"]).context("trace arguments")?.trace;
    report(
        "decode+resolve (no output)",
        run_pipeline(secs, &records, pipeline(tree.root(), Filter::from_args(&args), Format::Json, io::sink())?)?,
    );
    report(
        "decode+resolve+JSON to io::sink",
        run_pipeline(secs, &records, pipeline(tree.root(), Filter::default(), Format::Json, io::sink())?)?,
    );
    let null = io::BufWriter::new(std::fs::File::create("/dev/null")?);
    report(
        "decode+resolve+JSON to /dev/null",
        run_pipeline(secs, &records, pipeline(tree.root(), Filter::default(), Format::Json, null)?)?,
    );
    report(
        "decode+resolve+text to io::sink",
        run_pipeline(secs, &records, pipeline(tree.root(), Filter::default(), Format::Text, io::sink())?)?,
    );
    Ok(())
}
