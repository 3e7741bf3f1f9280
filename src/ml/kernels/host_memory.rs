//! How much more memory this process may take, so that a model too large for the machine is a
//! clear error before its weights are allocated instead of the kernel's out-of-memory kill
//! halfway through (which ends the process with no message).
//!
//! The figure is the smaller of what the system has (`MemAvailable` plus free swap, from
//! `/proc/meminfo`) and the headroom under this process's control-group limit (cgroup v2
//! `memory.max`, or v1 `memory.limit_in_bytes`: containers and Slurm jobs set one), where the
//! group's usage leaves out the page cache the kernel reclaims first, and the headroom under
//! `RKD_MEMORY_LIMIT` (the user's own limit, less this process's resident memory). Linux only;
//! elsewhere nothing is known and nothing is refused. The checks themselves, and what stages
//! running side by side reserve, are [`super::memory_ledger`]'s.

use std::path::{Path, PathBuf};

use super::memory_peers::Peer;

/// Setting this variable (to anything) turns the check off.
pub const SKIP_VAR: &str = "RKD_NO_MEMORY_CHECK";

/// A limit of the user's own on this process's memory (`12G`, `512M`; a bare number is
/// megabytes, as Slurm's `--mem`), counted like a container's: on a shared machine without one.
pub const LIMIT_VAR: &str = "RKD_MEMORY_LIMIT";

/// Bytes this process may still allocate, if the system says.
pub fn available_bytes() -> Option<u64> {
    available_beside(&[])
}

/// [`available_bytes`], less what other rkd processes reserved and have not allocated yet
/// (`peers`): all of them count against the system's figure, those inside a limited control
/// group against that group's, none against [`LIMIT_VAR`] (which counts this process only).
pub fn available_beside(peers: &[Peer]) -> Option<u64> {
    let all: u64 = peers.iter().map(|p| p.reserved).sum();
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_available(&t))
        .map(|a| a.saturating_sub(all));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| {
        cgroup_headroom(&t, Path::new("/sys/fs/cgroup"), &|controllers, group| {
            reserved_inside(peers, controllers, group)
        })
    });
    let own = own_limit().ok().flatten().and_then(|limit| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Some(limit.saturating_sub(proc_kib(&status, "VmRSS:")?.saturating_mul(1024)))
    });
    [system, cgroup, own].into_iter().flatten().min()
}

/// [`LIMIT_VAR`] in bytes, when set; `Err` saying what is wrong when it does not read as a size.
pub fn own_limit() -> Result<Option<u64>, String> {
    let Some(value) = std::env::var_os(LIMIT_VAR) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    parse_size(&text).map(Some).ok_or_else(|| {
        format!("{LIMIT_VAR}={text:?} is not a size: write it like 12G, 512M or 1T (a bare number is megabytes)")
    })
}

/// A size as Slurm's `--mem` writes it: a positive whole number with `K`, `M`, `G` or `T` (an
/// optional `B`, any case), or without a unit, megabytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.to_ascii_uppercase();
    let shift = match unit.strip_suffix('B').unwrap_or(&unit) {
        "K" => 10,
        "" | "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    let n: u64 = digits.parse().ok().filter(|&n| n > 0)?;
    n.checked_mul(1 << shift)
}

/// Gives the heap's free memory back to the system (glibc on Linux; elsewhere nothing): the
/// freed buffers that the start-up heap settings keep for reuse count as used in the system's
/// figures until then.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The message of a check that failed: `what` needs `needed` bytes, `available` are left.
pub fn too_large(needed: u64, available: u64, what: &str, remedy: &str) -> String {
    format!(
        "{what} would take at least {} of memory, and this process has {} left (RAM and swap, within \
         its container's or Slurm job's limit): {remedy}, a machine with more memory, \
         or on Slurm a larger `mem` in the stage's `resources`; {SKIP_VAR}=1 skips this check",
        size(needed),
        size(available)
    )
}

/// Bytes as GiB with one decimal, or as whole MiB below 1 GiB.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{} MiB", b.div_ceil(1 << 20)),
    }
}

/// The number of a `FIELD:   N kB` line of a `/proc` file (`/proc/meminfo`, `/proc/self/status`).
pub fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `MemAvailable + SwapFree` of `/proc/meminfo` text, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let available = proc_kib(text, "MemAvailable:")?;
    Some(
        available
            .saturating_add(proc_kib(text, "SwapFree:").unwrap_or(0))
            .saturating_mul(1024),
    )
}

/// What the `peers` inside `group` of the hierarchy of `controllers` reserved.
fn reserved_inside(peers: &[Peer], controllers: &str, group: &str) -> u64 {
    peers
        .iter()
        .filter(|p| p.inside(controllers, group))
        .map(|p| p.reserved)
        .sum()
}

/// The smallest headroom (limit − usage − what `beside` says other processes inside the group
/// reserved) of this process's control group and its ancestors, from `/proc/self/cgroup` text
/// and the cgroup file system mounted at `root`; `None` when no group sets a limit. `beside` is
/// given the hierarchy's controllers ("" or "memory") and the group's path ("/slurm/job_7").
fn cgroup_headroom(self_cgroup: &str, root: &Path, beside: &dyn Fn(&str, &str) -> u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (base, limit_file, usage_file) = match controllers {
            "" => (root.to_path_buf(), "memory.max", "memory.current"),
            c if c.split(',').any(|c| c == "memory") => {
                (root.join("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")
            }
            _ => continue,
        };
        for (dir, group) in ancestors(&base, path) {
            let limit = read_u64(&dir.join(limit_file));
            let usage = read_u64(&dir.join(usage_file));
            if let (Some(limit), Some(usage)) = (limit, usage) {
                let headroom = limit
                    .saturating_sub(usage.saturating_sub(inactive_file(&dir)))
                    .saturating_sub(beside(controllers, &group));
                best = Some(best.map_or(headroom, |b| b.min(headroom)));
            }
        }
    }
    best
}

/// The group's directory under `base` and those of its ancestors up to `base` itself, each with
/// its group path ("/", "/slurm", "/slurm/job_7").
fn ancestors(base: &Path, group: &str) -> Vec<(PathBuf, String)> {
    let mut dir = base.to_path_buf();
    let mut path = String::new();
    let mut out = vec![(dir.clone(), "/".to_string())];
    for part in group.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..") {
        dir.push(part);
        path.push('/');
        path.push_str(part);
        out.push((dir.clone(), path.clone()));
    }
    out
}

/// Bytes of the group's page cache that the kernel reclaims first when the group nears its
/// limit (`inactive_file` of `memory.stat`; v1's hierarchical `total_inactive_file` where
/// present): counted in the group's usage, but not memory the process has taken (a stage's
/// output just written, say). 0 when not known.
fn inactive_file(dir: &Path) -> u64 {
    let Ok(stat) = std::fs::read_to_string(dir.join("memory.stat")) else {
        return 0;
    };
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
    };
    field("total_inactive_file")
        .or_else(|| field("inactive_file"))
        .unwrap_or(0)
}

/// A file holding one number (`max` and other words: `None`).
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_memory_is_ram_plus_free_swap() {
        let text = "MemTotal: 16000000 kB\nMemFree: 1000 kB\nMemAvailable: 8000000 kB\nSwapTotal: 2000 kB\nSwapFree: 1000 kB\n";
        assert_eq!(meminfo_available(text), Some(8_001_000 * 1024));
        assert_eq!(meminfo_available("MemAvailable: 4 kB\n"), Some(4096), "no swap line");
        assert_eq!(
            meminfo_available("MemTotal: 4 kB\n"),
            None,
            "an old kernel without MemAvailable"
        );
    }

    #[test]
    fn the_tightest_cgroup_limit_on_the_way_up_counts() {
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, file: &str, text: &str| {
            let dir = root.path().join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        };
        // v2: the job's group has no limit of its own, its parent allows 10 GiB of which 4 are used.
        write("slurm/job_7", "memory.max", "max\n");
        write("slurm/job_7", "memory.current", "1000\n");
        write("slurm", "memory.max", &format!("{}\n", 10u64 << 30));
        write("slurm", "memory.current", &format!("{}\n", 4u64 << 30));
        assert_eq!(cgroup_headroom("0::/slurm/job_7\n", root.path(), &none), Some(6 << 30));
        // Of the 4 GiB used, 1 GiB is page cache the kernel reclaims first (a file just written).
        write(
            "slurm",
            "memory.stat",
            &format!("anon 3000\nfile {}\ninactive_file {}\n", 2u64 << 30, 1u64 << 30),
        );
        assert_eq!(cgroup_headroom("0::/slurm/job_7\n", root.path(), &none), Some(7 << 30));
        assert_eq!(
            cgroup_headroom("0::/elsewhere\n", root.path(), &none),
            None,
            "no limit anywhere"
        );
        // v1: the memory controller's own hierarchy.
        write("memory/docker/abc", "memory.limit_in_bytes", "2048\n");
        write("memory/docker/abc", "memory.usage_in_bytes", "512\n");
        let v1 = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n";
        assert_eq!(cgroup_headroom(v1, root.path(), &none), Some(1536));
        write(
            "memory/docker/abc",
            "memory.stat",
            "cache 300\ninactive_file 100\ntotal_inactive_file 256\n",
        );
        assert_eq!(cgroup_headroom(v1, root.path(), &none), Some(1792));
        assert_eq!(cgroup_headroom("garbage", root.path(), &none), None);
        // Another rkd process in the job's group reserved 2 GiB: they come off the group's
        // headroom; one elsewhere on the machine reserved 3 GiB: it does not.
        let peer = |reserved: u64, cgroup: &str| Peer {
            pid: 1,
            reserved,
            stages: 1,
            waiting: false,
            cgroups: vec![cgroup.to_string()],
        };
        let peers = [peer(2 << 30, "0::/slurm/job_7/step_1"), peer(3 << 30, "0::/user.slice")];
        let beside = |c: &str, g: &str| reserved_inside(&peers, c, g);
        assert_eq!(
            cgroup_headroom("0::/slurm/job_7\n", root.path(), &beside),
            Some(5 << 30)
        );
    }

    /// No other process reserved anything.
    fn none(_: &str, _: &str) -> u64 {
        0
    }

    #[test]
    fn memory_limits_read_as_slurm_writes_sizes() {
        assert_eq!(parse_size("12G"), Some(12 << 30));
        assert_eq!(parse_size(" 512mb "), Some(512 << 20));
        assert_eq!(parse_size("2048"), Some(2048 << 20), "a bare number is megabytes");
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        for bad in ["", "0G", "-1G", "1.5G", "12 G", "12X", "G", "99999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_read_as_gib_or_below_one_as_mib() {
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(1 << 30), "1.0 GiB");
        assert_eq!(size((1 << 30) - 1), "1024 MiB");
        assert_eq!(size(1), "1 MiB");
        assert_eq!(size(0), "0 MiB");
    }
}
