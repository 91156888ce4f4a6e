//! What the tests need from their environment: a server or a tool that
//! `scripts/test.sh` names in a variable. Without it a test skips, saying
//! so, except on CI (`CI` set), where it missing is a mistake: a failure.

/// The value of `var`, or `None` (the test skips) outside CI; `hint` says
/// how to get it.
pub fn var_or_skip(var: &str, test: &str, hint: &str) -> Option<String> {
    let Ok(value) = std::env::var(var) else {
        assert!(std::env::var_os("CI").is_none(), "{var} is not set on CI: run the tests through scripts/test.sh");
        eprintln!("skipping {test}: {var} is not set ({hint})");
        return None;
    };
    Some(value)
}
