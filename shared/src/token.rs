//! The EKS bearer token: a presigned STS `GetCallerIdentity` URL naming the cluster in the
//! signed `x-k8s-aws-id` header, as `aws eks get-token` makes it.
//!
//! See <https://docs.aws.amazon.com/eks/latest/userguide/cluster-auth.html>. The URL always names
//! the regional STS host, never an endpoint override, because the cluster's authenticator
//! replays it against real STS.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use chrono::{DateTime, Utc};

/// A token is accepted for 15 minutes after signing whatever `X-Amz-Expires` says.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Tokens are not reused closer than this to their expiry.
pub const REUSE_MARGIN: Duration = Duration::from_secs(60);

/// An EKS bearer token. Its `Debug` and `Display` never show the value.
#[derive(Clone)]
pub struct EksToken {
    value: String,
    signed_at: SystemTime,
}

impl EksToken {
    /// The `k8s-aws-v1.` token to send as `Authorization: Bearer`.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// When the cluster stops accepting it.
    pub fn expires_at(&self) -> SystemTime {
        self.signed_at + TOKEN_LIFETIME
    }

    /// Whether it is still good for at least `needed` from `now` (plus a safety margin).
    pub fn usable_for(&self, now: SystemTime, needed: Duration) -> bool {
        now + needed + REUSE_MARGIN <= self.expires_at()
    }
}

impl fmt::Debug for EksToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksToken")
            .field("value", &"<redacted>")
            .field("signed_at", &DateTime::<Utc>::from(self.signed_at))
            .finish()
    }
}

/// The token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing the EKS token for cluster {cluster}: {reason}")]
pub struct TokenError {
    cluster: String,
    reason: String,
}

/// botocore's percent-encoding for query strings (RFC 3986 unreserved characters kept).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Signs a token for `cluster` in `region` with `credentials` at `time`.
///
/// The query parameters are laid out in the order botocore uses, so the token is the same,
/// byte for byte, as the one the AWS CLI makes from the same inputs.
pub fn sign_token(
    cluster: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<EksToken, TokenError> {
    let error = |reason: String| TokenError {
        cluster: cluster.to_owned(),
        reason,
    };
    let host = format!("sts.{region}.amazonaws.com");
    let date = DateTime::<Utc>::from(time)
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let scope = format!(
        "{}/{}/{region}/sts/aws4_request",
        credentials.access_key_id(),
        &date[..8]
    );

    let mut query = vec![
        ("Action", "GetCallerIdentity".to_owned()),
        ("Version", "2011-06-15".to_owned()),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".to_owned()),
        ("X-Amz-Credential", scope),
        ("X-Amz-Date", date),
        ("X-Amz-Expires", "60".to_owned()),
        ("X-Amz-SignedHeaders", "host;x-k8s-aws-id".to_owned()),
    ];
    if let Some(session_token) = credentials.session_token() {
        query.push(("X-Amz-Security-Token", session_token.to_owned()));
    }
    let query_string = |params: &[(&str, String)]| {
        params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    };
    let url = format!("https://{host}/?{}", query_string(&query[..2]));

    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    settings.session_token_mode = SessionTokenMode::Include;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| error(e.to_string()))?
        .into();
    let headers = [("host", host.as_str()), ("x-k8s-aws-id", cluster)];
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| error(e.to_string()))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| error(e.to_string()))?
        .into_parts();
    let signature = instructions
        .params()
        .iter()
        .find(|(name, _)| *name == "X-Amz-Signature")
        .map(|(_, value)| value.to_string())
        .ok_or_else(|| error("the signer returned no signature".into()))?;

    query.push(("X-Amz-Signature", signature));
    let presigned = format!("https://{host}/?{}", query_string(&query));
    Ok(EksToken {
        value: format!(
            "k8s-aws-v1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned)
        ),
        signed_at: time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        )
    }

    fn decode(token: &EksToken) -> String {
        let b64 = token.expose().strip_prefix("k8s-aws-v1.").unwrap();
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn token_names_regional_sts_and_signs_exactly_host_and_cluster_header() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_383_800);
        let token = sign_token("prod", "eu-west-1", &creds(None), time).unwrap();
        let url = decode(&token);
        assert!(url.starts_with(
            "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
        ));
        assert!(url.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&"));
        assert!(url.contains("X-Amz-Expires=60&"));
        assert!(!url.contains("X-Amz-Security-Token"));
        assert!(!token.expose().contains('='));
        assert_eq!(
            token.expires_at(),
            time + Duration::from_secs(900),
            "valid 15 minutes from signing"
        );
    }

    #[test]
    fn temporary_credentials_put_the_session_token_in_the_url() {
        let token = sign_token(
            "c",
            "us-east-1",
            &creds(Some("FwoG/abc+def=")),
            SystemTime::now(),
        )
        .unwrap();
        assert!(
            decode(&token).contains("X-Amz-Security-Token=FwoG%2Fabc%2Bdef%3D&X-Amz-Signature=")
        );
    }

    #[test]
    fn a_different_cluster_gives_a_different_signature() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_383_800);
        let a = sign_token("a", "us-east-1", &creds(None), time).unwrap();
        let b = sign_token("b", "us-east-1", &creds(None), time).unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = sign_token("c", "us-east-1", &creds(None), SystemTime::now()).unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains("k8s-aws-v1"));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn reuse_stops_a_margin_before_expiry() {
        let now = SystemTime::now();
        let token = sign_token("c", "us-east-1", &creds(None), now).unwrap();
        assert!(token.usable_for(now, Duration::from_secs(600)));
        assert!(!token.usable_for(now + Duration::from_secs(600), Duration::from_secs(600)));
    }
}
