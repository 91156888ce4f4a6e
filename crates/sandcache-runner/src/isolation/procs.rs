//! The process table, as `/proc` shows it.

use std::fs;

/// One process, as `/proc/<pid>/status` shows it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub zombie: bool,
}

pub(super) fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
        let ppid = field("PPid:")?.parse().ok()?;
        let zombie = field("State:").is_some_and(|s| s.starts_with('Z') || s.starts_with('X'));
        Some(Proc { pid, ppid, uid, zombie })
    })
    .collect()
}

/// Whether `pid` descends from `ancestor` (and is not it).
pub(super) fn descends_from(all: &[Proc], pid: u32, ancestor: u32) -> bool {
    let mut cur = pid;
    for _ in 0..4096 {
        let Some(p) = all.iter().find(|p| p.pid == cur) else { return false };
        if p.ppid == ancestor {
            return true;
        }
        if p.ppid <= 1 {
            return false;
        }
        cur = p.ppid;
    }
    false
}
