//! A local, throwaway PostgreSQL cluster with logical replication enabled.
//!
//! Used by `shapesync serve` when no database URL is given (the "embedded default"), and by the
//! test suite, which starts one cluster per test binary. PostgreSQL refuses to run as root, so when
//! we are root every server binary runs as the `postgres` OS user (`runuser`), and the data
//! directory is handed to that user. The server listens on 127.0.0.1 only, with trust auth.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Options for starting a cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory holding `data/`, `sock/` and `server.log`. Created if missing.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Durability off (`fsync=off`): only for tests, where it makes the suite much faster.
    pub fast_unsafe: bool,
    /// Stop the server and delete `dir` when this process exits, however it exits (a small
    /// watchdog process waits for our pid to disappear). Used by tests.
    pub remove_on_exit: bool,
    /// More `-c name=value` settings, after (so overriding) the defaults: e.g. a test of a
    /// server without logical replication.
    pub settings: Vec<(String, String)>,
}

/// A running cluster. Dropping it does not stop the server; call [`EmbeddedPostgres::stop`].
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

const OS_USER: &str = "postgres";

impl EmbeddedPostgres {
    /// Initialise (if needed) and start a cluster, waiting until it accepts connections.
    pub fn start(opts: &EmbeddedOptions) -> anyhow::Result<Self> {
        let bin = find_bin_dir()?;
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let dir = opts.dir.canonicalize()?;
        let data = dir.join("data");
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock)?;
        if is_root() {
            chown_to_postgres(&dir)?;
            chown_to_postgres(&sock)?;
        }
        if !data.join("PG_VERSION").exists() {
            let out = as_pg(bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ])
                .args(if opts.fast_unsafe {
                    &["--no-sync"][..]
                } else {
                    &[][..]
                })
                .output()
                .context("running initdb")?;
            if !out.status.success() {
                bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut settings = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c wal_level=logical \
             -c max_replication_slots=100 -c max_wal_senders=100 -c max_connections=300 \
             -c shared_buffers=128MB -c wal_sender_timeout=60s",
            sock.display()
        );
        if opts.fast_unsafe {
            settings.push_str(" -c fsync=off -c full_page_writes=off");
        }
        for (name, value) in &opts.settings {
            let valid = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            };
            if !valid(name) || !valid(value) {
                bail!("invalid embedded Postgres setting {name}={value}");
            }
            settings.push_str(&format!(" -c {name}={value}"));
        }
        let log = dir.join("server.log");
        let out = as_pg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &settings, "start"])
            .stdout(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        let pg = EmbeddedPostgres { dir, port, bin };
        pg.wait_ready(Duration::from_secs(30))?;
        if opts.remove_on_exit {
            pg.spawn_exit_watchdog()?;
        }
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Fast shutdown (`pg_ctl stop -m fast`).
    pub fn stop(&self) -> anyhow::Result<()> {
        let out = as_pg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres on port {} did not become ready", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A detached shell that waits for this process to exit, then stops the server and removes
    /// the directory. Tests have no global teardown hook; this is the reliable substitute.
    fn spawn_exit_watchdog(&self) -> anyhow::Result<()> {
        let pid = std::process::id();
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let stop = if is_root() {
            format!(
                "runuser -u {OS_USER} -- {} -D {} -m immediate -w stop",
                pg_ctl.display(),
                data.display()
            )
        } else {
            format!(
                "{} -D {} -m immediate -w stop",
                pg_ctl.display(),
                data.display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; cd /; {stop} >/dev/null 2>&1; rm -rf '{}'",
            self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the postgres watchdog")?;
        Ok(())
    }
}

/// The PostgreSQL server binaries: `$PG_BIN`, else `/usr/lib/postgresql/<newest>/bin`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(root)
        .with_context(|| format!("no PostgreSQL installation under {}", root.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    match versions.last() {
        Some(v) => Ok(root.join(v.to_string()).join("bin")),
        None => bail!("no PostgreSQL version found under {}", root.display()),
    }
}

/// Ask the kernel for a free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn is_root() -> bool {
    // `id -u` avoids unsafe libc calls; the result is cached.
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    let st = Command::new("chown")
        .arg(format!("{OS_USER}:"))
        .arg(path)
        .status()?;
    if !st.success() {
        bail!("chown {} to {OS_USER} failed", path.display());
    }
    Ok(())
}

/// A command that runs as the `postgres` OS user when we are root, from `/` (the postgres
/// user may not be able to enter our working directory).
fn as_pg(program: PathBuf) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", OS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir("/");
    cmd
}
