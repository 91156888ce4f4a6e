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
    // As the seed's `typeof x !== "string"`: `null` is not a string either.
    match obj.get(field) {
        None => Ok(None),
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
        // The seed's checks, in its order and with its messages.
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return Err(bad("Invalid JSON body"));
        };
        let repo = opt_string(&obj, "repo")?;
        let site = opt_string(&obj, "site")?;
        if repo.as_deref().is_none_or(str::is_empty) && site.as_deref().is_none_or(str::is_empty) {
            return Err(bad("At least one of 'repo' or 'site' is required"));
        }
        let env_name = opt_string(&obj, "envName")?;
        let branch = opt_string(&obj, "branch")?;
        let string_array = "runCommand must be a string array";
        let run_command = match obj.get("runCommand") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(string_array))).collect::<Result<
                    Vec<_>,
                    _,
                >>(
                )?,
            ),
            Some(_) => return Err(bad(string_array)),
        };
        let envs = match obj.get("envs") {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(bad("envs must be an object with string values")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("envs must be an object with string values")),
        };
        // sandcache's own checks: what reaches git, a process or a path.
        if run_command.as_ref().is_some_and(|c| c.first().is_some_and(String::is_empty)) {
            return Err(bad("runCommand[0] must not be empty"));
        }
        if let Some(bad_key) = envs.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(bad(format!("envs has an invalid variable name {bad_key:?}")));
        }
        if branch.as_ref().is_some_and(|b| b.is_empty() || b.starts_with('-')) {
            return Err(bad("branch must be a branch name"));
        }
        if repo.as_ref().is_some_and(|r| r.starts_with('-')) {
            return Err(bad("repo must be a git URL"));
        }
        let repo = repo.filter(|r| !r.is_empty());
        let site = match (site.filter(|s| !s.is_empty()), &repo) {
            (Some(s), _) => s,
            (None, Some(r)) => {
                site_from_repo(r).ok_or_else(|| bad(format!("Cannot derive site name from repo URL: {r}")))?
            }
            (None, None) => unreachable!("checked above"),
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
            (&b"{"[..], "Invalid JSON body"),
            (b"[]", "Invalid JSON body"),
            (b"", "Invalid JSON body"),
            (br#"{"repo":1}"#, "repo must be a string"),
            (br#"{"site":1}"#, "site must be a string"),
            (b"{}", "At least one of 'repo' or 'site' is required"),
            (br#"{"site":"s","envName":2}"#, "envName must be a string"),
            (br#"{"site":"s","branch":2}"#, "branch must be a string"),
            (br#"{"site":"s","runCommand":"deno run"}"#, "runCommand must be a string array"),
            (br#"{"site":"s","runCommand":[1]}"#, "runCommand must be a string array"),
            (br#"{"site":"s","envs":{"A":1}}"#, "envs must be an object with string values"),
            (br#"{"site":"s","envs":[]}"#, "envs must be an object with string values"),
            (br#"{"site":"s","envs":null}"#, "envs must be an object with string values"),
            (br#"{"site":"../etc"}"#, "site must be"),
            (br#"{"site":"s","branch":"--upload-pack=x"}"#, "branch"),
            (br#"{"repo":"--upload-pack=x"}"#, "repo must be"),
        ] {
            let err = DeployRequest::parse(body).unwrap_err();
            assert!(err.0.starts_with(msg), "{}: {err}", String::from_utf8_lossy(body));
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
