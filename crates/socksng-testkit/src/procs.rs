//! Processes: parsing /proc, the process tree of a started server and its CPU time and memory
//! (exact CPU from a per-instance cgroup when there is one), CPU pinning and nice, and starting
//! and stopping servers (each in its own process group, always killed by PID).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fields of `/proc/<pid>/stat` the measurements need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// User CPU time, clock ticks.
    pub utime: u64,
    /// System CPU time, clock ticks.
    pub stime: u64,
    /// User CPU time of waited-for children, clock ticks.
    pub cutime: u64,
    /// System CPU time of waited-for children, clock ticks.
    pub cstime: u64,
    /// Threads in the process.
    pub threads: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
        threads: field(20)?,
    })
}

/// A `Key:   1234 kB` value from `/proc/<pid>/status` or `smaps_rollup`, in KiB.
pub fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Every process on the system, from `/proc/*/stat` (vanished processes are skipped).
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name();
        let name = name.to_str()?;
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?)
    })
    .collect()
}

/// The roots and all their descendants (by parent pid) among `procs`.
pub fn tree(procs: &[ProcStat], roots: &[i32]) -> Vec<ProcStat> {
    let mut children: HashMap<i32, Vec<&ProcStat>> = HashMap::new();
    let by_pid: HashMap<i32, &ProcStat> = procs.iter().map(|p| (p.pid, p)).collect();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack: Vec<i32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(p) = by_pid.get(&pid) {
            out.push(**p);
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids.iter().map(|k| k.pid));
        }
    }
    out
}

/// One look at a process tree: CPU time so far and memory now.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeSample {
    /// utime + stime (+ reaped children's) of every process in the tree, seconds.
    pub cpu_s: f64,
    /// Sum of VmRSS, KiB (shared pages counted once per process).
    pub rss_kib: u64,
    /// Sum of Pss from smaps_rollup, KiB (shared pages split between the sharers).
    pub pss_kib: u64,
    /// Processes in the tree.
    pub procs: usize,
    /// Threads in the tree.
    pub threads: u64,
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Samples the trees rooted at `roots`. Reaped children's CPU (cutime/cstime) is included, so
/// a forking server's short-lived workers are counted once their parent has waited for them.
pub fn sample_tree(roots: &[i32]) -> TreeSample {
    let procs = all_processes();
    let members = tree(&procs, roots);
    let hz = clock_ticks();
    let mut s = TreeSample {
        procs: members.len(),
        ..TreeSample::default()
    };
    for p in &members {
        s.cpu_s += (p.utime + p.stime + p.cutime + p.cstime) as f64 / hz;
        s.threads += p.threads;
        let base = Path::new("/proc").join(p.pid.to_string());
        if let Ok(status) = std::fs::read_to_string(base.join("status")) {
            s.rss_kib += parse_kib(&status, "VmRSS").unwrap_or(0);
        }
        if let Ok(rollup) = std::fs::read_to_string(base.join("smaps_rollup")) {
            s.pss_kib += parse_kib(&rollup, "Pss").unwrap_or(0);
        }
    }
    s
}

/// A cgroup v2 directory made for one server instance: its `cpu.stat` counts the CPU time of
/// every process and thread ever in it, to the microsecond, including forked workers and
/// threads that have already exited. Removed on drop.
pub struct Cgroup {
    dir: PathBuf,
    procs_file: CString,
}

impl Cgroup {
    /// Creates `name` under the cgroup2 mount, if there is one and it is writable.
    pub fn create(name: &str) -> Option<Cgroup> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        let root = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })?;
        let dir = root.join(name);
        std::fs::create_dir(&dir).ok()?;
        let cg = Cgroup {
            procs_file: CString::new(dir.join("cgroup.procs").into_os_string().into_vec()).ok()?,
            dir,
        };
        cg.cpu_s().is_some().then_some(cg)
    }

    /// CPU seconds used by everything that has been in the group.
    pub fn cpu_s(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()?;
        Some(usec as f64 / 1e6)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the processes are reaped; exiting tasks may linger for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How a proxy's CPU and memory are read: its process roots (for /proc walks) and, when
/// available, its cgroup (for exact CPU time).
#[derive(Clone, Default)]
pub struct Meter {
    /// PIDs whose trees are the proxy; empty for direct.
    pub roots: Vec<i32>,
    /// The instance's cgroup.
    pub cgroup: Option<std::sync::Arc<Cgroup>>,
    /// The CPU the proxy is pinned to (and nothing else of ours runs on).
    pub core: Option<usize>,
}

impl Meter {
    /// Whether there is a proxy to measure.
    pub fn is_proxy(&self) -> bool {
        !self.roots.is_empty()
    }

    /// CPU seconds so far: the cgroup's count, else the /proc tree's clock ticks.
    pub fn cpu_s(&self) -> f64 {
        if !self.is_proxy() {
            return 0.0;
        }
        match self.cgroup.as_ref().and_then(|c| c.cpu_s()) {
            Some(v) => v,
            None => sample_tree(&self.roots).cpu_s,
        }
    }

    /// Where `cpu_s` comes from, for the JSON.
    pub fn cpu_source(&self) -> &'static str {
        match &self.cgroup {
            Some(_) => "cgroup2 cpu.stat usage_usec",
            None => "/proc/<pid>/stat clock ticks of the process tree",
        }
    }
}

/// Pins the calling thread (and threads it creates later) to a set of CPUs.
pub fn pin_self(cpus: &[usize]) -> io::Result<()> {
    set_affinity_set(cpus)
}

fn set_affinity(cpu: usize) -> io::Result<()> {
    set_affinity_set(&[cpu])
}

fn set_affinity_set(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the calling thread's nice value (threads created later inherit it).
pub fn set_nice(n: i32) -> io::Result<()> {
    // SAFETY: setpriority has no memory-safety preconditions. The `which` argument's C type
    // differs between libcs, hence the inferred cast.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A server process started here, in its own process group. Dropping it kills the
/// group and every descendant (by PID) and reaps the child.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    done: bool,
}

impl Proc {
    /// Starts `cmd` in a new process group, pinned to `cpu`, with stdout and stderr appended to
    /// `log`, in `cgroup` when given, and with SIGTERM as its parent-death signal (so a killed
    /// benchmark or test leaves no server behind).
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        cpu: Option<usize>,
        nice: Option<i32>,
        cgroup: Option<&Cgroup>,
        log: &Path,
    ) -> io::Result<Proc> {
        let procs_file = cgroup.map(|c| c.procs_file.clone());
        let out = File::options().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (sched_setaffinity, setpriority, open/write/close, prctl).
        unsafe {
            cmd.pre_exec(move || {
                // Join the instance's cgroup before exec, so every worker it forks is in it
                // ("0" means the writing process).
                if let Some(f) = &procs_file {
                    let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                if let Some(cpu) = cpu {
                    set_affinity(cpu)?;
                }
                if let Some(n) = nice {
                    set_nice(n)?;
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            done: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Some(description)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.done = true;
                Some(st.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The leader and its descendants (by PID), collected before any signal: once the leader
    /// is gone its orphans are reparented and no longer findable by walking from it.
    fn members(&self) -> Vec<i32> {
        tree(&all_processes(), &[self.pid()])
            .iter()
            .map(|p| p.pid)
            .collect()
    }

    /// SIGKILL to the group and to every PID in `members` (descendants that left the group:
    /// sshd's per-connection children call setsid).
    fn kill_all(&self, members: &[i32]) {
        // SAFETY: kill only sends signals, to our child's group and to PIDs seen in its tree.
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
            for &p in members {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }

    /// SIGTERM to the leader (which shuts down its own workers), up to `grace` to exit, then
    /// SIGKILL to whatever is left of the tree; always reaps.
    pub async fn stop(&mut self, grace: Duration) {
        if self.done {
            return;
        }
        let members = self.members();
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.done = true;
                // Give its workers a moment to follow, then take out any straggler.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.kill_all(&members);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if self.done {
            return;
        }
        let members = self.members();
        self.kill_all(&members);
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The last `n` lines of a file, joined by " | ".
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let line = "4242 (my (odd) proc) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 3 4 20 0 7 0 12345 1000000 200 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.ppid, 17);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (250, 75, 3, 4));
        assert_eq!(s.threads, 7);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 0").is_none());
    }

    #[test]
    fn kib_fields() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(parse_kib(status, "VmRSS"), Some(1234));
        assert_eq!(parse_kib(status, "VmSwap"), None);
        let rollup = "00400000-7fff [rollup]\nRss:  200 kB\nPss:   150 kB\nPss_Anon: 100 kB\n";
        assert_eq!(parse_kib(rollup, "Pss"), Some(150));
    }

    #[test]
    fn tree_follows_parents() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            utime: 0,
            stime: 0,
            cutime: 0,
            cstime: 0,
            threads: 1,
        };
        let procs = vec![p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(13, 10)];
        let mut got: Vec<i32> = tree(&procs, &[10]).iter().map(|p| p.pid).collect();
        got.sort();
        assert_eq!(got, vec![10, 11, 12, 13]);
        assert_eq!(tree(&procs, &[99]).len(), 0);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        let s = sample_tree(&[me]);
        assert!(s.procs >= 1);
        assert!(s.rss_kib > 0);
    }
}
