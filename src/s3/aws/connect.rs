//! Building the S3 client: endpoint checks (https unless `--allow-http`, wherever the
//! endpoint came from), retries and timeouts, the HTTP client and its trust store.

use std::time::Duration;

/// Attempts of each request by the SDK (connection errors, timeouts, 5xx, throttling,
/// unreadable answers).
pub const RETRY_ATTEMPTS: u32 = 8;

/// How to reach the server; shared by every subcommand.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub allow_http: bool,
    pub profile: Option<String>,
    /// Extra PEM certificates to trust (a private CA or a self-signed server), on top of the
    /// system's roots.
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// Why a connection could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "refusing plain HTTP endpoint {0}: the customer key would travel in clear text; use \
         https, or pass --allow-http if this is a trusted loopback or test server"
    )]
    PlainHttp(String),
    #[error(
        "refusing plain HTTP endpoint {url} from {origin}: the customer key would travel in \
         clear text; use https, or pass --allow-http if this is a trusted loopback or test server"
    )]
    PlainHttpFrom { url: String, origin: String },
    #[error("endpoint {0} is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("CA bundle {path}: {problem}")]
    CaBundle { path: String, problem: String },
}

/// The HTTPS client trusting `--ca-bundle` on top of the system roots.
fn https_client_with_ca(
    path: &std::path::Path,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, ConnectError> {
    use aws_smithy_http_client::tls;
    let bad = |problem: String| ConnectError::CaBundle {
        path: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(http_client(Some(context)))
}

/// How long an idle connection is kept. Short, because a pooled connection keeps its last
/// request head (the key's headers) and its last answer (plaintext) in buffers that only its
/// close frees, and then the wiping allocator clears them; a busy mount reuses connections
/// long before this, an idle one pays one TLS handshake when it wakes.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(5);

/// The HTTP client every store uses: rustls with aws-lc (as the SDK's default), `context`'s
/// trust store if given, idle connections closed after [`IDLE_CONNECTION`].
fn http_client(
    context: Option<aws_smithy_http_client::tls::TlsContext>,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    let b = aws_smithy_http_client::Builder::new()
        .pool_idle_timeout(IDLE_CONNECTION)
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
    match context {
        Some(c) => b.tls_context(c).build_https(),
        None => b.build_https(),
    }
}

/// Checks every request's scheme as it is sent, whatever configured the endpoint (a flag,
/// the environment, a config file, a profile, a redirect the SDK followed): without
/// `--allow-http` a request to an http:// URL never leaves, since it carries the key.
#[derive(Debug)]
struct HttpsOnly;

impl aws_smithy_runtime_api::client::interceptors::Intercept for HttpsOnly {
    fn name(&self) -> &'static str {
        "ssecfs::HttpsOnly"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let uri = context.request().uri();
        if uri.starts_with("https://") {
            return Ok(());
        }
        let shown = uri.split('?').next().unwrap_or(uri);
        Err(format!(
            "refusing to send a request to {shown}: not https, and the customer key would travel \
             in clear text (pass --allow-http for a trusted loopback or test server)"
        )
        .into())
    }
}

/// Build an S3 client from the standard AWS chain plus our connection options.
pub async fn build_client(conn: &Connection) -> Result<aws_sdk_s3::Client, ConnectError> {
    let endpoint = given_endpoint(conn)?;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &conn.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &conn.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let shared = loader.load().await;
    if endpoint.is_none() {
        check_configured_endpoint(conn, &shared)?;
    }
    let mut b = s3_config(&shared, conn.path_style || endpoint.is_some());
    if shared.region().is_none() {
        b = b.region(aws_config::Region::new("us-east-1"));
    }
    if !conn.allow_http {
        b = b.interceptor(HttpsOnly);
    }
    if let Some(ep) = endpoint {
        b = b.endpoint_url(ep);
    }
    b = b.http_client(match &conn.ca_bundle {
        Some(ca) => https_client_with_ca(ca)?,
        None => http_client(None),
    });
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// The endpoint given by `--endpoint` or the environment (`AWS_ENDPOINT_URL_S3`, then
/// `AWS_ENDPOINT_URL`), refused before anything is loaded when it is plain http (without
/// `--allow-http`) or no URL at all.
fn given_endpoint(conn: &Connection) -> Result<Option<String>, ConnectError> {
    let endpoint = conn
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(ep) = &endpoint {
        if ep.starts_with("http://") {
            if !conn.allow_http {
                return Err(ConnectError::PlainHttp(ep.clone()));
            }
        } else if !ep.starts_with("https://") {
            return Err(ConnectError::BadEndpoint(ep.clone()));
        }
    }
    Ok(endpoint)
}

/// The AWS config file can name an endpoint too (`endpoint_url` in the profile or in its
/// `[services]` section): the same rule as for a given one, and the refusal says where it
/// came from.
fn check_configured_endpoint(
    conn: &Connection,
    shared: &aws_config::SdkConfig,
) -> Result<(), ConnectError> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("all fields set");
    let configured = shared
        .service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| shared.endpoint_url().map(str::to_owned));
    let Some(url) = configured else {
        return Ok(());
    };
    let source = format!(
        "the AWS config file ({}, profile {})",
        std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| "~/.aws/config".into()),
        conn.profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok())
            .unwrap_or_else(|| "default".into())
    );
    if url.starts_with("http://") && !conn.allow_http {
        return Err(ConnectError::PlainHttpFrom {
            url,
            origin: source,
        });
    }
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(ConnectError::BadEndpoint(url));
    }
    Ok(())
}

/// The S3 settings every store runs with: addressing, checksums only where required,
/// retries that ride out an outage, and timeouts.
fn s3_config(shared: &aws_config::SdkConfig, path_style: bool) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(shared)
        .force_path_style(path_style)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        // Every request we make is idempotent (PUT/COPY/DELETE of a whole object or part, GET,
        // HEAD, LIST; a retried Complete that already succeeded is recognised by the ETag).
        // 8 attempts, 200 ms doubling to 10 s with jitter: ~11 s on average (23 s at most)
        // ride out a server restart or a burst of 5xx before the operation reports EIO.
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(RETRY_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(10)),
        )
        // The standard retry quota (a token bucket shared by the client) stops retrying after
        // a burst of failures; a filesystem would then turn a transient outage into EIO.
        .retry_partition(
            aws_sdk_s3::config::retry::RetryPartition::custom("ssecfs")
                .token_bucket(aws_sdk_s3::config::retry::TokenBucket::unlimited())
                .build(),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(300))
                .build(),
        )
}
