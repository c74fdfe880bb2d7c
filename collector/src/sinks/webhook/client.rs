//! One webhook's HTTP client: a POST of a JSON body, bounded by the webhook's timeout, with the
//! bearer token read from its file for every request and never logged.

use std::{io, path::PathBuf, time::Duration};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT},
};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use thiserror::Error;

use super::WebhookConfig;

/// The most of an answer that is read; a mutate answer is a few hundred bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a webhook cannot be set up.
#[derive(Debug, Error)]
pub enum ClientError {
    /// An https webhook on a host with no CA certificates to check its server with.
    #[error("webhook {name}: https needs the system's CA certificates, and none could be loaded")]
    NoRoots {
        /// The webhook.
        name: String,
        /// Why none were found.
        #[source]
        source: io::Error,
    },
}

/// Why one request did not get a 2xx answer.
#[derive(Debug, Error)]
pub enum CallError {
    /// No answer within the webhook's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (refused, reset, TLS).
    #[error("cannot reach the webhook")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The token file could not be read.
    #[error("cannot read the token file {}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The token is not a valid header value (a stray control character).
    #[error("the token in {} is not a valid header value", .0.display())]
    BadToken(PathBuf),
    /// The request could not be built (a bug).
    #[error("cannot build the request")]
    Request(#[source] http::Error),
    /// An answer that is not 2xx.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The answer's body could not be read, or was over [`MAX_ANSWER_BYTES`].
    #[error("cannot read the answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl CallError {
    /// The `outcome` label of `collector_webhook_requests_total`.
    pub const fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) | Self::Body(_) => "unreachable",
            Self::Token { .. } | Self::BadToken(_) | Self::Request(_) => "token_error",
            Self::Status(_) => "http_error",
        }
    }

    /// Whether trying again may help: no answer, or a 5xx / 429.
    pub const fn retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unreachable(_) | Self::Body(_) => true,
            Self::Status(code) => *code >= 500 || *code == 429,
            Self::Token { .. } | Self::BadToken(_) | Self::Request(_) => false,
        }
    }
}

/// The HTTP client of one webhook.
#[derive(Clone, Debug)]
pub struct WebhookClient {
    uri: Uri,
    timeout: Duration,
    token_file: Option<PathBuf>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl WebhookClient {
    /// A client for `config`; checks that an https URL can be verified.
    pub fn new(config: &WebhookConfig) -> Result<Self, ClientError> {
        let uri = config.url.0.clone();
        let connector = match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder.https_or_http().enable_http1().build(),
            Err(source) if uri.scheme_str() == Some("https") => {
                return Err(ClientError::NoRoots { name: config.name.clone(), source });
            }
            // Plain http needs no roots; an empty store refuses any https it is pointed at.
            Err(_) => HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build(),
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { uri, timeout: config.timeout.0, token_file: config.token_file.clone(), http })
    }

    /// POSTs `body` and returns a 2xx answer's body; anything else is an error. Must run inside
    /// a tokio runtime with time and I/O.
    pub async fn post(&self, body: Bytes) -> Result<Bytes, CallError> {
        let mut request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("collector/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &self.token_file {
            let token =
                std::fs::read_to_string(path).map_err(|source| CallError::Token { path: path.clone(), source })?;
            let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_err| CallError::BadToken(path.clone()))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let request = request.body(Full::new(body)).map_err(CallError::Request)?;
        let call = async {
            let response = self.http.request(request).await.map_err(CallError::Unreachable)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(CallError::Body)?
                .to_bytes();
            if status.is_success() { Ok(body) } else { Err(CallError::Status(status.as_u16())) }
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_elapsed| CallError::Timeout(self.timeout))?
    }
}
