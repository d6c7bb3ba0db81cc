//! OpenSSH's sshd as a benchmark peer: started on loopback with its own host key and a client key of its own
//! (key authentication only), and the client options every SSH benchmark uses for both sshd and sandbar, so the
//! same client, cipher and known-hosts handling meet both. Needs root (sshd's privilege separation directory) and
//! Debian's openssh-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command to completion; its stderr in the error when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    anyhow::ensure!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A fresh ed25519 key pair at `path` (and `path.pub`); returns the public line.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path))?;
    Ok(std::fs::read_to_string(path.with_extension("pub"))?.trim().to_owned())
}

/// `ssh`/`scp` options: no user config, the key at `key`, no prompts, a throwaway known-hosts file in `dir`, and
/// the cipher.
pub fn client_opts(dir: &Path, key: &Path, cipher: &str) -> Vec<String> {
    let mut opts: Vec<String> = ["-F", "/dev/null", "-i"].map(String::from).to_vec();
    opts.push(key.display().to_string());
    for o in ["IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=no", "LogLevel=ERROR"] {
        opts.extend(["-o".to_owned(), o.to_owned()]);
    }
    opts.extend(["-o".to_owned(), format!("UserKnownHostsFile={}", dir.join("known_hosts").display())]);
    opts.extend(["-c".to_owned(), cipher.to_owned()]);
    opts
}

/// A running sshd on 127.0.0.1; killed when dropped.
pub struct Sshd {
    child: Child,
    pub port: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// Starts sshd with its host key and config in `dir`, letting in the keys of the file `authorized`.
    pub fn start(dir: &Path, authorized: &Path) -> anyhow::Result<Self> {
        let sshd = ["/usr/sbin/sshd", "/sbin/sshd"].into_iter().find(|p| Path::new(p).exists());
        let sshd = sshd.ok_or_else(|| anyhow::anyhow!("no sshd: apt-get install -y openssh-server"))?;
        let host_key = dir.join("sshd_host_key");
        keygen(&host_key)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
        let sftp = ["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("internal-sftp");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PermitRootLogin yes\nSubsystem sftp {sftp}\nUseDNS no\n",
                host_key.display(),
                authorized.display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?;
        let child = Command::new(sshd).args(["-D", "-e", "-f"]).arg(&config).stderr(Stdio::null()).spawn()?;
        let me = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(format!("127.0.0.1:{}", me.port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }
}

/// A scratch directory under the system's temporary directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sandbar-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
