//! The benchmark's machine-wide accounting and settings: CPU use over a measured interval (the
//! proxy tree, this process, the proxy core's irq/softirq time from /proc/stat, everything
//! else), the descriptor limit, and the TCP congestion control of a run.

use crate::procs::{clock_ticks, Meter};
use std::io;

/// CPU seconds (user + system) this process has used, all threads.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes only into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Time split of one `/proc/stat` line, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time in tasks: user + nice + system + steal (steal: the hypervisor ran someone else).
    pub task: u64,
    /// Interrupt and softirq time, which (with IRQ time accounting) is charged to no task —
    /// on loopback this is much of the TCP/IP work a proxy's sends cause.
    pub irq: u64,
}

impl CpuTicks {
    /// Everything but idle and iowait.
    pub fn busy(self) -> u64 {
        self.task + self.irq
    }
}

/// The `cpu` (all CPUs, `cpu: None`) or `cpuN` line of `/proc/stat`.
pub fn parse_cpu_ticks(text: &str, cpu: Option<usize>) -> Option<CpuTicks> {
    let prefix = match cpu {
        None => "cpu ".to_owned(),
        Some(n) => format!("cpu{n} "),
    };
    let line = text.lines().find(|l| l.starts_with(&prefix))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    Some(CpuTicks {
        task: f(0) + f(1) + f(2) + f(7),
        irq: f(5) + f(6),
    })
}

fn cpu_ticks(cpu: Option<usize>) -> CpuTicks {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_cpu_ticks(&text, cpu).unwrap_or_default()
}

/// CPU accounting over a measured interval: the proxy tree, this process, the proxy's core as
/// a whole, and everything else on the machine (to flag a run disturbed by other work).
pub struct CpuWindow {
    meter: Meter,
    proxy0: f64,
    gen0: f64,
    all0: CpuTicks,
    core0: CpuTicks,
    t0: std::time::Instant,
}

/// What a [`CpuWindow`] saw.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// Wall-clock seconds.
    pub wall: f64,
    /// Proxy tree CPU seconds (task time).
    pub proxy: f64,
    /// Busy seconds of the proxy's pinned core including irq/softirq time, when pinned.
    pub proxy_core: Option<f64>,
    /// This process's CPU seconds (task time).
    pub gen: f64,
    /// Task CPU seconds of anything else: other processes and kernel threads.
    pub other: f64,
}

impl CpuWindow {
    /// Starts the window now.
    pub fn start(meter: &Meter) -> CpuWindow {
        CpuWindow {
            meter: meter.clone(),
            proxy0: meter.cpu_s(),
            gen0: self_cpu_s(),
            all0: cpu_ticks(None),
            core0: meter.core.map(|c| cpu_ticks(Some(c))).unwrap_or_default(),
            t0: std::time::Instant::now(),
        }
    }

    /// Ends the window.
    pub fn finish(&self) -> CpuUse {
        let wall = self.t0.elapsed().as_secs_f64();
        let gen = self_cpu_s() - self.gen0;
        let proxy = self.meter.cpu_s() - self.proxy0;
        let hz = clock_ticks();
        let all = cpu_ticks(None);
        let task = all.task.saturating_sub(self.all0.task) as f64 / hz;
        let proxy_core = match (self.meter.core, self.meter.is_proxy()) {
            (Some(c), true) => {
                let now = cpu_ticks(Some(c));
                Some(now.busy().saturating_sub(self.core0.busy()) as f64 / hz)
            }
            _ => None,
        };
        CpuUse {
            wall,
            proxy,
            proxy_core,
            gen,
            other: (task - gen - proxy).max(0.0),
        }
    }
}

impl CpuUse {
    /// Adds `gen_cpu_util`, `other_cpu_util` and, with a proxy, `proxy_cpu_util` and
    /// `proxy_core_util`, each as a fraction of one CPU over `wall` seconds.
    pub fn record(&self, m: &mut crate::cases::Measure, proxy: bool, wall: f64) {
        let wall = wall.max(1e-9);
        m.metric("gen_cpu_util", self.gen / wall);
        m.metric("other_cpu_util", self.other / wall);
        if proxy {
            m.metric("proxy_cpu_util", self.proxy / wall);
            if let Some(core) = self.proxy_core {
                m.metric("proxy_core_util", (core / wall).min(1.0));
            }
        }
    }
}

/// Raises RLIMIT_NOFILE: the hard limit to `want` if permitted, the soft limit to the hard.
/// Returns the resulting soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_max < want {
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return want;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let up = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

const CONGESTION_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_congestion_control";

/// The machine's default TCP congestion control (what new sockets get), if readable.
pub fn tcp_congestion() -> Option<String> {
    std::fs::read_to_string(CONGESTION_SYSCTL)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The machine-wide TCP congestion control, set for one run and put back on drop. It applies
/// to every subject and to direct alike: loopback runs are sensitive to it (BBR's pacing caps
/// a stream whose two ends sit on different cores, see docs/benchmarks.md).
pub struct CongestionControl {
    previous: String,
}

impl CongestionControl {
    /// Sets `algorithm` (it must be in tcp_available_congestion_control; needs root).
    pub fn set(algorithm: &str) -> io::Result<CongestionControl> {
        let previous = tcp_congestion().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{CONGESTION_SYSCTL} unreadable"),
            )
        })?;
        std::fs::write(CONGESTION_SYSCTL, algorithm)?;
        Ok(CongestionControl { previous })
    }
}

impl Drop for CongestionControl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(CONGESTION_SYSCTL, &self.previous) {
            eprintln!(
                "# warning: could not restore TCP congestion control {}: {e}",
                self.previous
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_proc_stat() {
        let text = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\n\
                    cpu10 9 9 9 9 9 9 9 9 0 0\n";
        let all = parse_cpu_ticks(text, None).unwrap();
        assert_eq!(
            all,
            CpuTicks {
                task: 100 + 5 + 50 + 2,
                irq: 3 + 7
            }
        );
        assert_eq!(all.busy(), 167);
        let c0 = parse_cpu_ticks(text, Some(0)).unwrap();
        assert_eq!(
            c0,
            CpuTicks {
                task: 50 + 2 + 25 + 1,
                irq: 4
            }
        );
        assert_eq!(parse_cpu_ticks(text, Some(1)), None);
        assert_eq!(parse_cpu_ticks(text, Some(10)).unwrap().irq, 18);
        assert_eq!(parse_cpu_ticks("intr 1 2\n", None), None);
    }
}
