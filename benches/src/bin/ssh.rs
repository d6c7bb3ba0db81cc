//! SSH figures, side by side with OpenSSH's sshd on the same machine, same file, same cipher, same client:
//! `scp` (SFTP protocol, OpenSSH 9) of a 1 GiB file up and down, connection setup (`ssh host true`), and
//! interactive echo latency (a keystroke to its echo by the remote terminal's line discipline).
//!
//! Run as root: `cargo run --release -p sandbar-benches --bin ssh` (needs Debian's openssh-server for the peer;
//! uses scripts/build-daemon's output or SANDBAR_STATIC_DAEMON). `SSH_BENCH_CIPHER` picks the cipher
//! (default aes256-gcm@openssh.com), `SSH_BENCH_MIB` the file size (default 1024). For `benches/run`:
//! `SANDBAR_BENCH_SAMPLES=FILE` appends the figures there as samples (see `sandbar_benches::report`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use sandbar_benches::sshd::{Sshd, client_opts, run};
use sandbar_benches::{Daemon, median_p99, sample};

struct Peer {
    name: &'static str,
    port: String,
}

fn scp_secs(opts: &[String], port: &str, from: &str, to: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    run(Command::new("scp").args(opts).args(["-q", "-P", port, from, to]))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Keystroke-to-echo round trips through `ssh -tt host cat` (the remote terminal echoes each byte).
fn echo_latency(opts: &[String], port: &str) -> anyhow::Result<(f64, f64)> {
    let mut child = Command::new("ssh")
        .args(opts)
        .args(["-tt", "-p", port, "root@127.0.0.1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut input = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut output = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    // Ready once the line comes back twice: the terminal's echo, then cat's copy.
    input.write_all(b"ready\n")?;
    let mut seen = 0;
    let mut line = String::new();
    while seen < 2 {
        line.clear();
        anyhow::ensure!(output.read_line(&mut line)? > 0, "ssh ended early");
        if line.contains("ready") {
            seen += 1;
        }
    }
    let mut samples = Vec::new();
    let mut byte = [0u8; 1];
    for i in 0..320 {
        let t = Instant::now();
        input.write_all(b"x")?;
        input.flush()?;
        loop {
            output.read_exact(&mut byte)?;
            if byte[0] == b'x' {
                break;
            }
        }
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(median_p99(&mut samples))
}

fn main() -> anyhow::Result<()> {
    let bin = std::env::var("SANDBAR_STATIC_DAEMON")
        .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/sandbar-daemon".into());
    let cipher = std::env::var("SSH_BENCH_CIPHER").unwrap_or_else(|_| "aes256-gcm@openssh.com".into());
    let mib: u64 = std::env::var("SSH_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = std::env::temp_dir().join(format!("sandbar-ssh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("client_key");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key))?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, &public)?;

    let daemon = Daemon::start_with(Path::new(&bin), &[("SANDBAR_SSH_AUTHORIZED_KEYS", public.trim())])?;
    let sshd = Sshd::start(&dir, &authorized)?;
    let sshd_port = sshd.port.clone();
    let daemon_port = daemon.ssh.rsplit(':').next().unwrap_or_default().to_owned();
    let peers = [Peer { name: "daemon", port: daemon_port }, Peer { name: "sshd", port: sshd_port }];

    let src = dir.join("src.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&block)?;
        }
    }
    let opts = client_opts(&dir, &key, &cipher);
    println!("cipher {cipher}, file {mib} MiB, client {}", {
        let v = Command::new("ssh").arg("-V").output()?;
        String::from_utf8_lossy(&v.stderr).trim().to_owned()
    });
    let mut up_mbs = Vec::new();
    let mut down_mbs = Vec::new();
    for p in &peers {
        // Warm up the connection path (and the page cache of the source file).
        run(Command::new("ssh").args(&opts).args(["-p", &p.port, "root@127.0.0.1", "true"]))?;
        let remote = dir.join(format!("up-{}.bin", p.name));
        let back = dir.join(format!("down-{}.bin", p.name));
        let mut best_up = f64::MAX;
        let mut best_down = f64::MAX;
        for _ in 0..3 {
            let up =
                scp_secs(&opts, &p.port, &src.display().to_string(), &format!("root@127.0.0.1:{}", remote.display()))?;
            let down =
                scp_secs(&opts, &p.port, &format!("root@127.0.0.1:{}", remote.display()), &back.display().to_string())?;
            anyhow::ensure!(std::fs::metadata(&back)?.len() == mib << 20, "{}: short download", p.name);
            best_up = best_up.min(up);
            best_down = best_down.min(down);
        }
        let _ = std::fs::remove_file(&remote);
        let _ = std::fs::remove_file(&back);
        let (up, down) = (mib as f64 / best_up, mib as f64 / best_down);
        up_mbs.push(up);
        down_mbs.push(down);
        println!("{:8} scp upload   {:7.1} MiB/s (best of 3)", p.name, up);
        println!("{:8} scp download {:7.1} MiB/s (best of 3)", p.name, down);
        sample("scp_up_mib_s", p.name, up)?;
        sample("scp_down_mib_s", p.name, down)?;

        let mut setup = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            run(Command::new("ssh").args(&opts).args(["-p", &p.port, "root@127.0.0.1", "true"]))?;
            setup.push(t.elapsed());
        }
        let (med, p99) = median_p99(&mut setup);
        println!(
            "{:8} connect+auth+exec `true`: median {:.1} ms, p99 {:.1} ms (30 runs)",
            p.name,
            med / 1e3,
            p99 / 1e3
        );
        sample("ssh_setup_ms", p.name, med / 1e3)?;
        let (med, p99) = echo_latency(&opts, &p.port)?;
        println!("{:8} keystroke echo: median {:.0} us, p99 {:.0} us (300 keystrokes)", p.name, med, p99);
        sample("ssh_echo_p50_us", p.name, med)?;
    }
    if let ([a, b], [c, d]) = (up_mbs.as_slice(), down_mbs.as_slice()) {
        println!("daemon/sshd: upload {:.0}%, download {:.0}%", a / b * 100.0, c / d * 100.0);
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
