//! The AWS SDK configuration every AWS client of the agent uses (S3 for
//! backups, Route 53 for DNS): ring-only TLS, bounded retries and
//! timeouts, a custom endpoint for S3-compatible stores and emulators, and
//! static credentials from environment variables or files when given (the
//! default chain otherwise: environment, profile, web identity, ECS,
//! instance metadata).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// Where static credentials come from (all `None`: the default chain).
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    pub access_key_id_env: Option<&'a str>,
    pub secret_access_key_env: Option<&'a str>,
    pub access_key_id_file: Option<&'a PathBuf>,
    pub secret_access_key_file: Option<&'a PathBuf>,
}

fn read_secret_file(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

impl Credentials<'_> {
    fn resolve(&self) -> Result<Option<(String, String)>> {
        Ok(
            match (
                self.access_key_id_env,
                self.secret_access_key_env,
                self.access_key_id_file,
                self.secret_access_key_file,
            ) {
                (Some(k), Some(s), _, _) => Some((
                    std::env::var(k)
                        .with_context(|| format!("read the access key id from ${k}"))?,
                    std::env::var(s)
                        .with_context(|| format!("read the secret access key from ${s}"))?,
                )),
                (_, _, Some(k), Some(s)) => Some((read_secret_file(k)?, read_secret_file(s)?)),
                _ => None,
            },
        )
    }
}

/// The shared SDK configuration for `region`, `endpoint` and `creds`.
pub async fn sdk_config(
    region: &str,
    endpoint: Option<&str>,
    creds: &Credentials<'_>,
    attempt_timeout: Duration,
) -> Result<aws_config::SdkConfig> {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_config::{BehaviorVersion, Region};
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

    crate::tls::install_crypto_provider();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_string()))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        );
    if let Some((id, secret)) = creds.resolve()? {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            id,
            secret,
            None,
            None,
            "milvus-dr-config",
        ));
    }
    if let Some(ep) = endpoint {
        loader = loader.endpoint_url(ep.to_string());
    }
    Ok(loader.load().await)
}
