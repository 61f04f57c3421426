//! Presigned S3 GET URLs for `presign = true` triggers: the job's payload carries a URL
//! that reads the object for a short time, so a handler with an HTTP grant for the
//! bucket's endpoint needs no AWS credentials inside its sandbox.
//!
//! Signed with SigV4 (`aws-sigv4`, query-string form, `UNSIGNED-PAYLOAD`) with the
//! credentials in the host's environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`: what Lambda sets for the function's role). The endpoint is
//! `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (path style) when set, else the bucket's
//! virtual-hosted address in the record's region.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What S3 leaves unencoded in a key's path: RFC 3986's unreserved characters and `/`.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The longest a presigned URL may live (S3's own limit).
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// What signs: credentials and where S3 is.
#[derive(Clone)]
pub struct Signer {
    access: String,
    secret: String,
    token: Option<String>,
    /// An explicit endpoint (path-style URLs), e.g. a local S3.
    endpoint: Option<String>,
    /// The region when a record names none.
    region: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access", &self.access)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with these credentials.
    pub fn new(access: &str, secret: &str, token: Option<&str>) -> Self {
        Self {
            access: access.into(),
            secret: secret.into(),
            token: token.map(Into::into),
            endpoint: None,
            region: "us-east-1".into(),
        }
    }

    /// The signer the environment describes, or why there is none.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(access), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err("no AWS credentials in the environment (AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY) to presign the object's URL with"
                .into());
        };
        let mut signer = Self::new(&access, &secret, var("AWS_SESSION_TOKEN").as_deref());
        signer.endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            signer.region = region;
        }
        Ok(signer)
    }

    /// A GET URL for `key` in `bucket` (in `region`, else the signer's), valid for
    /// `expires` (at most [`MAX_EXPIRY`]) from `now`.
    pub fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        region: &str,
        expires: Duration,
        now: SystemTime,
    ) -> Result<String, String> {
        let region = if region.is_empty() {
            self.region.as_str()
        } else {
            region
        };
        let path = utf8_percent_encode(key, KEY).to_string();
        let url = match &self.endpoint {
            Some(endpoint) => format!("{}/{bucket}/{path}", endpoint.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com/{path}"),
        };
        let identity = aws_credential_types::Credentials::new(
            self.access.clone(),
            self.secret.clone(),
            self.token.clone(),
            None,
            "jobhost",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires.min(MAX_EXPIRY));
        // S3 signs the path as sent: encoded once, never normalized.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let failed = |e: &dyn std::fmt::Display| format!("cannot presign {url}: {e}");
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let request = SignableRequest::new(
            "GET",
            url.as_str(),
            std::iter::empty(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| failed(&e))?;
        let (instructions, _) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
        let mut request = http::Request::get(url.as_str())
            .body(())
            .map_err(|e| failed(&e))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request.uri().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_once_and_the_query_says_how_long() -> Result<(), String> {
        let signer = Signer::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_579_600);
        let url = signer.presign_get(
            "uploads",
            "incoming/a b+c.png",
            "eu-west-1",
            Duration::from_secs(300),
            at,
        )?;
        assert!(
            url.starts_with("https://uploads.s3.eu-west-1.amazonaws.com/incoming/a%20b%2Bc.png?"),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Expires=300",
            "X-Amz-Signature=",
            "X-Amz-Credential=AKIDEXAMPLE%2F20251201%2Feu-west-1%2Fs3%2Faws4_request",
        ] {
            assert!(url.contains(part), "{part}: {url}");
        }
        // Another key, another signature.
        let other = signer.presign_get(
            "uploads",
            "incoming/b.png",
            "eu-west-1",
            Duration::from_secs(300),
            at,
        )?;
        let signature = |u: &str| u.split("X-Amz-Signature=").nth(1).map(str::to_string);
        assert_ne!(signature(&url), signature(&other));
        Ok(())
    }
}
