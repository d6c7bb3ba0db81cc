//! Benchmark helpers: start the static daemon on loopback, read its ready line, sample its memory, and summarise
//! latencies. Benchmarks print figures; they assert nothing about time.

pub mod report;
pub mod soak;
pub mod sshd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "bench-token-0123456789";

/// A daemon started for a benchmark; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub toolbox: String,
    pub terminal: String,
    /// Address of the SSH server.
    pub ssh: String,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, &[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with(bin: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sandbar-bench-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("work"))?;
        let mut child = Command::new(bin)
            .env("SANDBAR_DAEMON_TOKEN", TOKEN)
            .env("SANDBAR_TOOLBOX_ADDR", "127.0.0.1:0")
            .env("SANDBAR_TERMINAL_ADDR", "127.0.0.1:0")
            .env("SANDBAR_SSH_ADDR", "127.0.0.1:0")
            .env("SANDBAR_WORK_DIR", dir.join("work"))
            .env("SANDBAR_STATE_DIR", dir.join("state"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |name: &str| {
            line.split_whitespace().find_map(|kv| kv.strip_prefix(name)).map(str::to_owned).unwrap_or_default()
        };
        let (toolbox, terminal, ssh) = (field("toolbox="), field("terminal="), field("ssh="));
        anyhow::ensure!(!toolbox.is_empty(), "no ready line: {line:?}");
        Ok(Self { child, toolbox, terminal, ssh, dir })
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (median, p99) of a sample, in microseconds.
pub fn median_p99(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0)
    };
    (at(0.5), at(0.99))
}

/// A client that signs each request with [`TOKEN`], as the proxy does (so its cost is in every figure).
pub fn client() -> anyhow::Result<sandbar_testkit::daemon::SignedClient> {
    Ok(sandbar_testkit::daemon::SignedClient::new(reqwest::Client::builder().build()?, TOKEN))
}

/// The request credential (`x-sandbar-daemon-auth`) for one request of `method` to `path_and_query`.
pub fn auth(method: &str, path_and_query: &str) -> String {
    sandbar_support::daemon_auth::sign(TOKEN, method, path_and_query)
}

/// Appends one sample (`{"metric", "subject", "value"}`, see [`report`]) to the file `SANDBAR_BENCH_SAMPLES`
/// names, when it is set: how a benchmark binary hands its figures to `benches/run`.
pub fn sample(metric: &str, subject: &str, value: f64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Ok(path) = std::env::var("SANDBAR_BENCH_SAMPLES") else { return Ok(()) };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::json!({"metric": metric, "subject": subject, "value": value}))?;
    Ok(())
}

/// An environment variable as a number, `default` when unset or not a number.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The subjects in turn, starting at position `round % len`: interleaved rounds, the order turning each round (as
/// `benches/run`'s `rotate`), so that no subject always runs first or last.
pub fn rotate<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    (0..items.len()).map(|i| items[(i + round) % items.len()]).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotate_turns_the_order_each_round() {
        let s = ["a", "b", "c"];
        assert_eq!(super::rotate(&s, 0), ["a", "b", "c"]);
        assert_eq!(super::rotate(&s, 1), ["b", "c", "a"]);
        assert_eq!(super::rotate(&s, 5), ["c", "a", "b"]);
    }
}
