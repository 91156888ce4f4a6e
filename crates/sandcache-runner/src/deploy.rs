//! The `POST /sandbox/deploy` body, validated as the seed's `sandbox.ts` does.

use std::collections::BTreeMap;

use serde_json::Value;

/// Largest deploy body accepted: envs are small; anything bigger is abuse.
pub const MAX_BODY: usize = 256 << 10;

/// A validated deploy request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeployRequest {
    pub repo: Option<String>,
    pub site: String,
    pub env_name: Option<String>,
    pub branch: Option<String>,
    /// `Some(vec![])` means "no worker"; `None` means the runner's default.
    pub run_command: Option<Vec<String>>,
    pub envs: BTreeMap<String, String>,
}

/// Why a body was refused (HTTP 400), with the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

fn opt_string(obj: &serde_json::Map<String, Value>, field: &str) -> Result<Option<String>, BadRequest> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{field} must be a string"))),
    }
}

/// The site's name from a repo URL: its last path segment without `.git`.
pub fn site_from_repo(repo: &str) -> Option<String> {
    let path = repo.trim_end_matches('/');
    let last = path.rsplit(['/', ':']).next()?;
    let name = last.strip_suffix(".git").unwrap_or(last);
    (!name.is_empty()).then(|| name.to_owned())
}

/// A site name is used in paths and keys: keep it to a safe alphabet.
fn valid_site(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 128
        && site != "."
        && site != ".."
        && site.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl DeployRequest {
    /// Parses and validates a body. Errors name the field at fault.
    pub fn parse(body: &[u8]) -> Result<DeployRequest, BadRequest> {
        if body.len() > MAX_BODY {
            return Err(bad(format!("body too large (over {MAX_BODY} bytes)")));
        }
        let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON body: {e}")))?
        };
        let Value::Object(obj) = value else {
            return Err(bad("body must be a JSON object"));
        };
        let repo = opt_string(&obj, "repo")?;
        let site = opt_string(&obj, "site")?;
        let env_name = opt_string(&obj, "envName")?;
        let branch = opt_string(&obj, "branch")?;
        let run_command = match obj.get("runCommand") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad("runCommand must be an array of strings")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(bad("runCommand must be an array of strings")),
        };
        if run_command.as_ref().is_some_and(|c| c.first().is_some_and(String::is_empty)) {
            return Err(bad("runCommand[0] must not be empty"));
        }
        let envs = match obj.get("envs") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(bad(format!("envs.{k} must be a string"))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("envs must be an object of strings")),
        };
        if let Some(bad_key) = envs.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(bad(format!("envs has an invalid variable name {bad_key:?}")));
        }
        if let Some(b) = &branch {
            if b.is_empty() || b.starts_with('-') {
                return Err(bad("branch must be a branch name"));
            }
        }
        if let Some(r) = &repo {
            if r.is_empty() || r.starts_with('-') {
                return Err(bad("repo must be a git URL"));
            }
        }
        let site = match (site, &repo) {
            (Some(s), _) => s,
            (None, Some(r)) => site_from_repo(r).ok_or_else(|| bad("cannot derive site from repo; pass site"))?,
            (None, None) => return Err(bad("repo or site is required")),
        };
        if !valid_site(&site) {
            return Err(bad("site must be 1-128 characters of letters, digits, '-', '_' or '.'"));
        }
        Ok(DeployRequest { repo, site, env_name, branch, run_command, envs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_defaults_to_the_repos_last_segment() {
        assert_eq!(site_from_repo("https://github.com/deco-sites/storefront.git").as_deref(), Some("storefront"));
        assert_eq!(site_from_repo("git@github.com:deco-sites/shop").as_deref(), Some("shop"));
        assert_eq!(site_from_repo("file:///tmp/x/app/").as_deref(), Some("app"));
        let r = DeployRequest::parse(br#"{"repo":"https://h/o/my-site.git"}"#).unwrap();
        assert_eq!(r.site, "my-site");
    }

    #[test]
    fn bodies_are_validated_field_by_field() {
        for (body, msg) in [
            (&b"{"[..], "Invalid JSON"),
            (b"[]", "JSON object"),
            (br#"{"site":1}"#, "site must be a string"),
            (br#"{"site":"s","runCommand":"deno run"}"#, "runCommand must be an array"),
            (br#"{"site":"s","runCommand":[1]}"#, "runCommand must be an array"),
            (br#"{"site":"s","envs":{"A":1}}"#, "envs.A must be a string"),
            (br#"{"site":"s","envs":[]}"#, "envs must be an object"),
            (br#"{"site":"../etc"}"#, "site must be"),
            (br#"{"site":"s","branch":"--upload-pack=x"}"#, "branch"),
            (br#"{"repo":"--upload-pack=x"}"#, "repo must be"),
            (b"{}", "repo or site is required"),
        ] {
            let err = DeployRequest::parse(body).unwrap_err();
            assert!(err.0.contains(msg), "{}: {err}", String::from_utf8_lossy(body));
        }
        assert!(DeployRequest::parse(&vec![b' '; MAX_BODY + 1]).unwrap_err().0.contains("too large"));
    }

    #[test]
    fn an_empty_run_command_means_no_worker() {
        let r = DeployRequest::parse(br#"{"site":"s","runCommand":[]}"#).unwrap();
        assert_eq!(r.run_command, Some(vec![]));
        let r = DeployRequest::parse(br#"{"site":"s","envs":{"DECO_CACHE_S3_BUCKET":"b"}}"#).unwrap();
        assert_eq!(r.envs.get("DECO_CACHE_S3_BUCKET").map(String::as_str), Some("b"));
    }
}
