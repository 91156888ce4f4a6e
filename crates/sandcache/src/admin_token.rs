//! `sandcache admin-token`: a short-lived admin token for one pod, or that
//! pod's key (see `sandcache_runner::admin::token` for the scheme).

use std::path::PathBuf;
use std::process::ExitCode;

use sandcache_runner::admin::Key;
use sandcache_runner::admin::token::{MAX_TTL, unix_now};

#[derive(Debug, clap::Args)]
pub struct AdminTokenArgs {
    /// The platform's master key: a file holding 64 hex digits.
    #[arg(long, value_name = "FILE")]
    master_file: PathBuf,
    /// The pod the token opens: the name its key was derived from.
    #[arg(long, value_name = "NAME")]
    pod: String,
    /// Seconds the token stays valid (at most 86400).
    #[arg(long, default_value = "300", value_name = "SECS")]
    ttl: u64,
    /// Print the pod's key instead (what its runner reads from
    /// SANDCACHE_ADMIN_KEY_FILE), for the pod's init container.
    #[arg(long)]
    pod_key: bool,
}

pub fn run(args: &AdminTokenArgs) -> ExitCode {
    match token(args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn token(args: &AdminTokenArgs) -> Result<String, String> {
    if args.pod.is_empty() || args.pod.len() > 253 || args.pod.chars().any(char::is_control) {
        return Err(format!("--pod {:?}: expected a pod name (1 to 253 characters, no control characters)", args.pod));
    }
    if args.ttl == 0 || args.ttl > MAX_TTL.as_secs() {
        return Err(format!("--ttl {}: expected 1 to {} seconds", args.ttl, MAX_TTL.as_secs()));
    }
    let shown = args.master_file.display();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(&args.master_file).map_err(|e| format!("{shown}: {e}"))?, 4096),
        &mut text,
    )
    .map_err(|e| format!("{shown}: {e}"))?;
    let master = Key::from_hex(&text).map_err(|e| format!("--master-file {shown}: {e}"))?;
    let pod = master.pod_key(&args.pod);
    Ok(if args.pod_key { pod.to_hex() } else { pod.mint(unix_now() + args.ttl) })
}
