//! Managed PostgreSQL wants TLS: the API's store connects with `sslmode=require`, and with `verify-full` against the
//! server's CA (`sslrootcert`), to a private throwaway cluster that accepts TLS connections only (its own data
//! directory, a certificate made here with openssl, a free loopback port), which is stopped and removed after.
//! A connection without TLS, and `verify-full` with another CA, are refused, so the test fails if TLS is not used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use sandbar_api::Db;

/// Where `initdb` and `pg_ctl` are: on the `PATH` (`/usr/local/bin` links them), else Debian's versioned directory.
fn pg_bin(name: &str) -> PathBuf {
    let on_path = ["/usr/local/bin", "/usr/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists());
    let debian = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found.pop()
    };
    on_path.or_else(debian).unwrap_or_else(|| panic!("{name} not found (scripts/setup installs PostgreSQL)"))
}

/// Runs a PostgreSQL tool, as `postgres` when we are root (initdb and postgres refuse root).
fn run_pg(tool: &str, args: &[&str]) {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let bin = pg_bin(tool);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`, plus an unrelated CA.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=sandbar test {ca}"));
        openssl(
            dir,
            &[&["req", "-x509"], &ec[..], &["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]].concat(),
        );
    }
    openssl(
        dir,
        &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// A PostgreSQL cluster of this test alone; stopped (immediately) and removed on drop, even after a failure.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        certificates(root);
        std::fs::write(root.join("pw"), "tls-test-pw\n").unwrap();
        // The cluster's user owns everything (postgres wants its key file private and its own).
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(root).status().unwrap();
        let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        assert!(!is_root || chown.success());
        let data = root.join("data");
        let data_s = data.to_str().unwrap();
        run_pg(
            "initdb",
            &["-D", data_s, "-U", "sandbar", "--pwfile", root.join("pw").to_str().unwrap(), "-A", "scram-sha-256"],
        );
        // TLS connections only: a plain one matches no line and is refused.
        std::fs::write(data.join("pg_hba.conf"), "hostssl all all 127.0.0.1/32 scram-sha-256\n").unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = root.display();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={r} -c ssl=on \
             -c ssl_cert_file={r}/server.crt -c ssl_key_file={r}/server.key -c fsync=off"
        );
        let log = root.join("postgres.log");
        let cluster = Self { dir, port };
        run_pg("pg_ctl", &["-D", data_s, "-o", &options, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
        cluster
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://sandbar:tls-test-pw@{host}:{}/postgres?{query}", self.port)
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::panic::catch_unwind(|| {
            run_pg("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "-t", "30", "stop"]);
        });
    }
}

/// Whether this session's connection is encrypted, as the server sees it.
async fn server_says_tls(db: &Db) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_store_connects_over_tls_with_sslmode_require_and_verify_full() {
    let pg = Cluster::start();

    let db = Db::open(&pg.url("127.0.0.1", "sslmode=require")).await.expect("sslmode=require");
    assert!(server_says_tls(&db).await);
    db.pool.close().await;

    let ca = pg.file("ca.crt");
    for host in ["127.0.0.1", "localhost"] {
        let url = pg.url(host, &format!("sslmode=verify-full&sslrootcert={ca}"));
        let db = Db::open(&url).await.unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        assert!(server_says_tls(&db).await);
        db.pool.close().await;
    }

    // The server takes no plain connection, and verify-full refuses a certificate its CA did not sign.
    let plain = Db::open(&pg.url("127.0.0.1", "sslmode=disable")).await;
    assert!(plain.is_err(), "a plain connection was accepted");
    let other = pg.file("other-ca.crt");
    let wrong = Db::open(&pg.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={other}"))).await;
    assert!(wrong.is_err(), "verify-full accepted a certificate of another CA");
}
