//! Static keys from the AWS shared credentials file, the one link of the AWS
//! default chain that `object_store` does not provide.
//!
//! Reads `[PROFILE]` (from `AWS_PROFILE`, default `default`) in
//! `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`): the keys
//! `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token`.
//! SSO and `credential_process` profiles are not supported.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::CredentialProvider;
use object_store::aws::AwsCredential;

#[derive(Debug)]
pub(crate) struct ProfileCredentials(Arc<AwsCredential>);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    #[error("AWS profile `{profile}` has no aws_access_key_id/aws_secret_access_key in `{}`", file.display())]
    Incomplete { profile: String, file: PathBuf },
    #[error("AWS profile `{profile}` is set but not found in `{}`", file.display())]
    Missing { profile: String, file: PathBuf },
}

impl ProfileCredentials {
    /// The profile's keys, `None` when no credentials file or default profile
    /// exists (the chain goes on to the instance metadata service).
    pub(crate) fn from_env() -> Result<Option<Self>, ProfileError> {
        let explicit = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty());
        let profile = explicit.clone().unwrap_or_else(|| "default".into());
        let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
            Some(f) => PathBuf::from(f),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".aws/credentials"),
                None => return Ok(None),
            },
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            return match explicit {
                Some(profile) => Err(ProfileError::Missing { profile, file }),
                None => Ok(None),
            };
        };
        match parse(&text, &profile) {
            Some(Some(cred)) => Ok(Some(ProfileCredentials(Arc::new(cred)))),
            Some(None) => Err(ProfileError::Incomplete { profile, file }),
            None if explicit.is_some() => Err(ProfileError::Missing { profile, file }),
            None => Ok(None),
        }
    }
}

/// `None`: no such section; `Some(None)`: the section lacks keys.
fn parse(text: &str, profile: &str) -> Option<Option<AwsCredential>> {
    let mut in_section = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section = name == profile || name.strip_prefix("profile ").is_some_and(|n| n.trim() == profile);
            found |= in_section;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    if !found {
        return None;
    }
    Some(match (id, secret) {
        (Some(key_id), Some(secret_key)) => Some(AwsCredential { key_id, secret_key, token }),
        _ => None,
    })
}

#[async_trait::async_trait]
impl CredentialProvider for ProfileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        Ok(Arc::clone(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n[other]\naws_access_key_id=C\n";
        let c = parse(text, "default").unwrap().unwrap();
        assert_eq!((c.key_id.as_str(), c.secret_key.as_str(), c.token.is_none()), ("A", "B", true));
        assert!(parse(text, "other").unwrap().is_none(), "incomplete");
        assert!(parse(text, "nope").is_none(), "missing");
    }
}
