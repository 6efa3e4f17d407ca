//! Resource limits of a sandbox: memory, CPU, process count, wall time, file
//! size and open files.
//!
//! Memory, CPU and process caps need a cgroup, one per sandbox, created next
//! to the supervisor's own cgroup and removed when the sandbox ends. Both
//! cgroup v2 and the v1 controllers of a hybrid layout are used, per
//! controller, whichever holds it. Where no cgroup can be made (not root, no
//! delegated subtree), the caps fall back to rlimits that approximate them,
//! and [`Plan::warnings`] says what is weaker. File size and open files are
//! rlimits in every case.
//!
//! The child joins the cgroup itself, before exec, by writing `0` to each
//! `cgroup.procs` ([`Plan::procs_files`]): nothing the tool runs escapes it.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

/// What a sandbox may use. `None`: no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (swap off for the group).
    pub memory: Option<u64>,
    /// CPUs, fractional: 0.5 is half of one CPU's time.
    pub cpus: Option<f64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// Wall clock; the whole tree is killed when it runs out.
    pub timeout: Option<Duration>,
    /// Largest file the tool may write (SIGXFSZ / EFBIG past it).
    pub max_file_size: Option<u64>,
    /// Open file descriptors per process.
    pub max_open_files: Option<u64>,
}

impl Limits {
    fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some() || self.pids.is_some()
    }

    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A failure to set up limits that were asked for.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("invalid limit: {0}")]
    Invalid(String),
    #[error("cannot set up the sandbox's cgroup at {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Peak use of a sandbox, from its cgroup (absent without one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_peak: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub pids_peak: Option<u64>,
}

/// One rlimit for the child to set.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    pub resource: i32,
    pub value: u64,
}

/// How the limits of one sandbox are enforced.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per controller (`memory`, `cpu`, `pids`, `cpuacct`), the cgroup
    /// directory made for this sandbox.
    dirs: BTreeMap<&'static str, Dir>,
    pub rlimits: Vec<Rlimit>,
    /// What could not be enforced as asked.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
struct Dir {
    path: PathBuf,
    v2: bool,
}

/// Where the cgroup hierarchies are and where this process sits in them.
#[derive(Debug, Default)]
struct Layout {
    /// The v2 directory of this process, if v2 is mounted.
    v2_own: Option<PathBuf>,
    /// Controllers the v2 parent can hand down.
    v2_controllers: Vec<String>,
    /// v1 controller → this process's directory in its hierarchy.
    v1_own: BTreeMap<String, PathBuf>,
}

impl Layout {
    fn read() -> Self {
        let mut layout = Layout::default();
        let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
            return layout;
        };
        let v2_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.controllers").exists());
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                if let Some(root) = v2_root {
                    let own = root.join(rel);
                    layout.v2_controllers = std::fs::read_to_string(own.join("cgroup.controllers"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    layout.v2_own = Some(own);
                }
                continue;
            }
            let mount = Path::new("/sys/fs/cgroup").join(controllers);
            if !mount.is_dir() {
                continue;
            }
            for c in controllers.split(',') {
                layout.v1_own.insert(c.to_owned(), mount.join(rel));
            }
        }
        layout
    }
}

const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "cpuacct"];

impl Plan {
    /// The `RLIMIT_NOFILE` value, if `--max-open-files` set one.
    pub fn nofile(&self) -> Option<u64> {
        self.rlimits
            .iter()
            .find(|r| r.resource == libc::RLIMIT_NOFILE as i32)
            .map(|r| r.value)
    }

    /// Makes a cgroup for one spawn of sandbox `id`, and the rlimits for
    /// `limits`. Each spawn has a cgroup of its own (a `Sandbox` may spawn
    /// more than once, and two trees in one cgroup would share its caps and
    /// its kill).
    pub fn new(id: &str, limits: &Limits) -> Result<Plan, LimitError> {
        if let Some(c) = limits.cpus
            && !(c.is_finite() && c > 0.0)
        {
            return Err(LimitError::Invalid(format!("--cpus {c}: must be above 0")));
        }
        if limits.memory == Some(0) || limits.pids == Some(0) {
            return Err(LimitError::Invalid(
                "a limit of 0 leaves nothing to run".into(),
            ));
        }
        let mut plan = Plan::default();
        if let Some(v) = limits.max_file_size {
            plan.rlimits.push(Rlimit {
                resource: libc::RLIMIT_FSIZE as i32,
                value: v,
            });
        }
        if let Some(v) = limits.max_open_files {
            plan.rlimits.push(Rlimit {
                resource: libc::RLIMIT_NOFILE as i32,
                value: v,
            });
        }
        if !limits.needs_cgroup() {
            return Ok(plan);
        }
        let layout = Layout::read();
        static SPAWNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let spawn = SPAWNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("cordon-{id}-{}-{spawn}", std::process::id());
        for controller in CONTROLLERS {
            // Inserted as made: later controllers reuse a directory already
            // made (the one v2 directory; cpu and cpuacct sharing a v1 one).
            match plan.make_dir(&layout, controller, &name) {
                Ok(Some(dir)) => {
                    plan.dirs.insert(controller, dir);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(controller, error = %e, "no cgroup for this controller");
                }
            }
        }
        if let Err(e) = plan.apply(limits) {
            plan.remove();
            return Err(e);
        }
        plan.fall_back(limits);
        Ok(plan)
    }

    /// The controller's directory for this sandbox: under the v2 parent if it
    /// hands the controller down, else in the controller's v1 hierarchy.
    fn make_dir(
        &self,
        layout: &Layout,
        controller: &'static str,
        name: &str,
    ) -> io::Result<Option<Dir>> {
        if let Some(own) = &layout.v2_own
            && layout
                .v2_controllers
                .iter()
                .any(|c| c == controller || (controller == "cpuacct" && c == "cpu"))
        {
            if let Some(existing) = self.dirs.values().find(|d| d.v2) {
                return Ok(Some(existing.clone()));
            }
            // Hand the controllers down (refused while our own cgroup has
            // processes and is not the root: then v2 is not ours to use).
            let wanted: Vec<String> = ["memory", "cpu", "pids"]
                .iter()
                .filter(|c| layout.v2_controllers.iter().any(|x| x == *c))
                .map(|c| format!("+{c}"))
                .collect();
            std::fs::write(own.join("cgroup.subtree_control"), wanted.join(" "))?;
            let path = own.join(name);
            std::fs::create_dir(&path)?;
            return Ok(Some(Dir { path, v2: true }));
        }
        let Some(own) = layout.v1_own.get(controller) else {
            return Ok(None);
        };
        // cpu and cpuacct often share one hierarchy: one directory.
        if let Some(existing) = self
            .dirs
            .values()
            .find(|d| !d.v2 && d.path.parent() == Some(own.as_path()))
        {
            return Ok(Some(existing.clone()));
        }
        // A directory already there is someone else's: never joined.
        let path = own.join(name);
        std::fs::create_dir(&path)?;
        Ok(Some(Dir { path, v2: false }))
    }

    fn write(
        &self,
        controller: &str,
        v2_file: &str,
        v1_file: &str,
        value: &str,
    ) -> Result<(), LimitError> {
        let Some(dir) = self.dirs.get(controller) else {
            return Ok(());
        };
        let path = dir.path.join(if dir.v2 { v2_file } else { v1_file });
        std::fs::write(&path, value).map_err(|source| LimitError::Cgroup { path, source })
    }

    fn apply(&mut self, limits: &Limits) -> Result<(), LimitError> {
        if let Some(m) = limits.memory {
            self.write(
                "memory",
                "memory.max",
                "memory.limit_in_bytes",
                &m.to_string(),
            )?;
            // Swap off for the group, so the limit is a limit.
            let swap = match self.dirs.get("memory") {
                Some(d) if d.v2 => Some(("memory.swap.max", "0".to_owned())),
                Some(_) => Some(("memory.memsw.limit_in_bytes", m.to_string())),
                None => None,
            };
            if let Some((file, value)) = swap
                && let Some(d) = self.dirs.get("memory")
                && d.path.join(file).exists()
            {
                self.write("memory", file, file, &value)?;
            }
        }
        if let Some(c) = limits.cpus {
            let period = 100_000u64;
            let quota = ((c * period as f64).round() as u64).max(1000);
            match self.dirs.get("cpu") {
                Some(d) if d.v2 => {
                    self.write("cpu", "cpu.max", "", &format!("{quota} {period}"))?;
                }
                Some(_) => {
                    self.write("cpu", "", "cpu.cfs_period_us", &period.to_string())?;
                    self.write("cpu", "", "cpu.cfs_quota_us", &quota.to_string())?;
                }
                None => {}
            }
        }
        if let Some(p) = limits.pids {
            self.write("pids", "pids.max", "pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// Rlimits for what no cgroup could cap, with a warning for each.
    fn fall_back(&mut self, limits: &Limits) {
        if let (Some(m), false) = (limits.memory, self.dirs.contains_key("memory")) {
            self.rlimits.push(Rlimit {
                resource: libc::RLIMIT_AS as i32,
                value: m,
            });
            self.warnings.push(format!(
                "no memory cgroup: --memory {m} is enforced as an address-space rlimit per process (RLIMIT_AS), not for the whole tree"
            ));
        }
        if let (Some(p), false) = (limits.pids, self.dirs.contains_key("pids")) {
            self.rlimits.push(Rlimit {
                resource: libc::RLIMIT_NPROC as i32,
                value: p,
            });
            self.warnings.push(format!(
                "no pids cgroup: --pids {p} is enforced as RLIMIT_NPROC, which counts all of the user's processes and does not bind root"
            ));
        }
        if limits.cpus.is_some() && !self.dirs.contains_key("cpu") {
            self.warnings
                .push("no cpu cgroup: --cpus cannot be enforced".into());
        }
    }

    /// The `cgroup.procs` files the child writes `0` to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .dirs
            .values()
            .map(|d| d.path.join("cgroup.procs"))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Whether the sandbox has a cgroup to account and kill with.
    pub fn has_cgroup(&self) -> bool {
        !self.dirs.is_empty()
    }

    fn read(&self, controller: &str, v2_file: &str, v1_file: &str) -> Option<String> {
        let d = self.dirs.get(controller)?;
        std::fs::read_to_string(d.path.join(if d.v2 { v2_file } else { v1_file })).ok()
    }

    /// Peak use so far.
    pub fn usage(&self) -> Usage {
        let number = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        let cpu_usec = match self.dirs.get("cpu").or(self.dirs.get("cpuacct")) {
            Some(d) if d.v2 => self
                .read("cpu", "cpu.stat", "")
                .and_then(|s| key_value(&s, "usage_usec")),
            _ => number(self.read("cpuacct", "", "cpuacct.usage")).map(|ns| ns / 1000),
        };
        Usage {
            memory_peak: number(self.read("memory", "memory.peak", "memory.max_usage_in_bytes")),
            cpu_usec,
            pids_peak: number(self.read("pids", "pids.peak", "pids.peak")),
        }
    }

    /// The cgroup limit the sandbox ran into, if any: `memory` when the OOM
    /// killer struck in the group, `pids` when a fork was refused.
    pub fn limit_hit(&self) -> Option<&'static str> {
        let oom = self
            .read("memory", "memory.events", "memory.oom_control")
            .and_then(|s| key_value(&s, "oom_kill"))
            .unwrap_or(0);
        if oom > 0 {
            return Some("memory");
        }
        let refused = self
            .read("pids", "pids.events", "pids.events")
            .and_then(|s| key_value(&s, "max"))
            .unwrap_or(0);
        (refused > 0).then_some("pids")
    }

    /// Kills every process in the sandbox's cgroup.
    pub fn kill_all(&self) {
        if let Some(d) = self.dirs.values().find(|d| d.v2)
            && std::fs::write(d.path.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        // v1: no cgroup.kill. Kill what is listed until nothing is: a
        // process forking meanwhile is caught on the next pass (and the
        // pids cap bounds how many there can be).
        let Some(d) = self.dirs.values().next() else {
            return;
        };
        for _ in 0..1000 {
            let procs = std::fs::read_to_string(d.path.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the cgroup directories (once their processes are gone).
    pub fn remove(&self) {
        let mut dirs: Vec<&PathBuf> = self.dirs.values().map(|d| &d.path).collect();
        dirs.sort();
        dirs.dedup();
        for path in dirs {
            for _ in 0..200 {
                match std::fs::remove_dir(path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Busy: the last processes are still being torn down.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

/// `value` of the line `key value` in a flat-keyed cgroup file.
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::key_value;

    #[test]
    fn flat_keyed_files() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n";
        assert_eq!(key_value(events, "oom_kill"), Some(1));
        assert_eq!(key_value(events, "max"), Some(3));
        assert_eq!(key_value(events, "missing"), None);
    }
}
