//! A blocking CRI v1 client over containerd's Unix socket; the kubelet's calls on it
//! are in [`crate::kubelet`].
//!
//! Blocking so tests need no runtime of their own; it keeps working when called from
//! inside a tokio runtime (the call then runs on a scoped thread).

use std::future::Future;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ImageSpec, ImageStatusRequest, StatusRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::kubelet::Pod;

/// Longest a single CRI call may take before the harness gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A CRI v1 client; as the kubelet it tracks the pods it runs so the harness can remove them.
pub struct Cri {
    /// Dropped by hand: dropping a runtime inside another runtime's context panics.
    rt: ManuallyDrop<tokio::runtime::Runtime>,
    pub(crate) runtime: RuntimeServiceClient<Channel>,
    pub(crate) images: ImageServiceClient<Channel>,
    pub(crate) log_root: PathBuf,
    pub(crate) pods: Mutex<Vec<Pod>>,
    pub(crate) record: Option<PathBuf>,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri").field("log_root", &self.log_root).finish_non_exhaustive()
    }
}

impl Cri {
    /// Connects to the CRI socket and waits until the runtime reports RuntimeReady.
    ///
    /// Container logs go under `log_root`. When `record` is set, each pod's cgroup is
    /// appended to that file before the pod is made, so a later run can clean up after
    /// a test process that was killed.
    pub fn connect(socket: &Path, log_root: PathBuf, record: Option<PathBuf>, timeout: Duration) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the CRI client's tokio runtime")?;
        let socket = socket.to_path_buf();
        let deadline = Instant::now() + timeout;
        let channel = run(&rt, async {
            let mut last = anyhow!("not tried");
            while Instant::now() < deadline {
                match connect(&socket).await {
                    Ok(channel) => match runtime_ready(channel.clone()).await {
                        Ok(()) => return Ok(channel),
                        Err(e) => last = e,
                    },
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(last.context(format!("CRI at {} not ready within {timeout:?}", socket.display())))
        })?;
        Ok(Self {
            rt: ManuallyDrop::new(rt),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            log_root,
            pods: Mutex::new(Vec::new()),
            record,
        })
    }

    /// Runs `fut` to completion on this client's runtime (for raw calls on
    /// [`Cri::runtime_client`] / [`Cri::image_client`]).
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        run(&self.rt, fut)
    }

    /// A raw CRI RuntimeService client (use with [`Cri::block_on`]).
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// A raw CRI ImageService client (use with [`Cri::block_on`]).
    pub fn image_client(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    /// Waits until ImageStatus finds `image` (CRI learns of `ctr` imports asynchronously).
    pub fn wait_image(&self, image: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut c = self.images.clone();
            let req = ImageStatusRequest {
                image: Some(ImageSpec { image: image.to_owned(), ..Default::default() }),
                verbose: false,
            };
            let found = self.call(async move { c.image_status(req).await })?;
            if found.image.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("CRI does not see image {image} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn tracked(&self) -> std::sync::MutexGuard<'_, Vec<Pod>> {
        self.pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn call<T, F>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>> + Send,
        T: Send,
    {
        run(&self.rt, async {
            match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(status)) => Err(anyhow!("{}: {}", status.code(), status.message())),
                Err(_) => Err(anyhow!("CRI call timed out after {CALL_TIMEOUT:?}")),
            }
        })
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // SAFETY: `rt` is not touched again: this is the last use of `self`.
        let rt = unsafe { ManuallyDrop::take(&mut self.rt) };
        if tokio::runtime::Handle::try_current().is_ok() {
            rt.shutdown_background();
        }
    }
}

/// `block_on`, also from inside another tokio runtime (where block_on would panic).
fn run<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return rt.block_on(fut);
    }
    std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
        Ok(v) => v,
        Err(payload) => std::panic::resume_unwind(payload),
    })
}

async fn connect(socket: &Path) -> Result<Channel> {
    let socket = socket.to_path_buf();
    // The URI is unused: every connection goes to the Unix socket.
    Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connecting to the CRI socket")
}

async fn runtime_ready(channel: Channel) -> Result<()> {
    let status = RuntimeServiceClient::new(channel)
        .status(StatusRequest { verbose: false })
        .await
        .map_err(|s| anyhow!("CRI Status: {}: {}", s.code(), s.message()))?
        .into_inner();
    let ready = status.status.iter().flat_map(|s| &s.conditions).any(|c| c.r#type == "RuntimeReady" && c.status);
    if ready { Ok(()) } else { Err(anyhow!("runtime not ready: {status:?}")) }
}
