//! Keeping the worker's uid from the cloud credential endpoints.

/// The cloud credential and metadata endpoints: EC2 instance metadata, the
/// EKS Pod Identity agent (IPv4 and IPv6), and ECS's task endpoint.
pub const CREDENTIAL_ENDPOINTS_V4: &[&str] = &["169.254.169.254", "169.254.170.23", "169.254.170.2"];
pub const CREDENTIAL_ENDPOINTS_V6: &[&str] = &["fd00:ec2::254", "fd00:ec2::23"];

/// Adds (once) iptables and ip6tables rules rejecting every connection
/// from `uid` to the credential endpoints. Needs CAP_NET_ADMIN and the
/// iptables binaries; the same rules an init container adds.
pub fn block_metadata(uid: u32) -> Result<(), String> {
    if uid == rustix::process::getuid().as_raw() {
        return Err(format!(
            "the worker shares the runner's uid {uid}: blocking it would block the runner's own credentials"
        ));
    }
    for (tool, addrs, reject) in [
        ("iptables", CREDENTIAL_ENDPOINTS_V4, "icmp-port-unreachable"),
        ("ip6tables", CREDENTIAL_ENDPOINTS_V6, "icmp6-port-unreachable"),
    ] {
        for addr in addrs {
            let rule = [
                "OUTPUT",
                "-d",
                addr,
                "-m",
                "owner",
                "--uid-owner",
                &uid.to_string(),
                "-j",
                "REJECT",
                "--reject-with",
                reject,
            ];
            let run = |op: &str| {
                std::process::Command::new(tool)
                    .arg("-w")
                    .arg(op)
                    .args(rule)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {tool}: {e}"))
            };
            if run("-C")?.status.success() {
                continue;
            }
            let out = run("-I")?;
            if !out.status.success() {
                return Err(format!("{tool} -I {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
    }
    tracing::info!(target: "sandbox", "credential endpoints rejected for uid {uid} (iptables, ip6tables)");
    Ok(())
}
