//! A PostgreSQL server of Hoistway's own on loopback, for `hoistway cluster-demo` and tests: a
//! new cluster (`initdb`) in a directory of its own, started with `pg_ctl` on a free port,
//! listening on 127.0.0.1 only with trust authentication, stopped when dropped. The programs
//! come from the machine's PostgreSQL packages: `HOISTWAY_PG_BIN` names their directory, else
//! `initdb` on the `PATH`, else the newest `/usr/lib/postgresql/<version>/bin`. PostgreSQL does
//! not run as root: as root they run as the `postgres` user, which then owns the directory.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct LocalPostgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// The user the programs run as (`postgres` when this process is root).
    run_as: Option<String>,
    running: bool,
}

impl LocalPostgres {
    /// Creates a cluster in `dir/data` (which must not exist yet) and starts it.
    pub fn start(dir: &Path) -> io::Result<LocalPostgres> {
        let bin = programs()?;
        std::fs::create_dir_all(dir)?;
        let run_as = is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let (uid, gid) = ids_of(user)?;
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let data = dir.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut pg = LocalPostgres {
            bin,
            data,
            log: dir.join("postgres.log"),
            port,
            run_as,
            running: false,
        };
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                pg.data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        pg.start_again()?;
        Ok(pg)
    }

    /// Starts the server (again, after [`crash`](Self::crash) or [`stop`](Self::stop)) on
    /// the same port and files; it recovers from its WAL as after a power cut.
    pub fn start_again(&mut self) -> io::Result<()> {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
            port = self.port
        );
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-l".as_ref(),
                self.log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server as a crash does (`immediate`: every process quits at once, nothing is
    /// flushed or checkpointed; the next start recovers from the WAL).
    pub fn crash(&mut self) -> io::Result<()> {
        self.running = false;
        self.pg_ctl_stop("immediate")
    }

    /// The URL of its `postgres` database, as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: connections are cut, nothing committed is lost).
    pub fn stop(&mut self) -> io::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        self.pg_ctl_stop("fast")
    }

    /// `pg_ctl stop` in shutdown `mode`, waiting until it is down.
    fn pg_ctl_stop(&self, mode: &str) -> io::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> io::Result<()> {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::other(format!("cannot run {}: {e}", path.display())))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "cannot stop the private PostgreSQL");
        }
    }
}

/// The directory of `initdb` and `pg_ctl`.
fn programs() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HOISTWAY_PG_BIN") {
        return Ok(dir.into());
    }
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::other(
            "no PostgreSQL programs (initdb, pg_ctl) found: install PostgreSQL's server package, set HOISTWAY_PG_BIN to their directory, or name a server to use",
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The user's uid and gid.
fn ids_of(user: &str) -> io::Result<(u32, u32)> {
    let id = |flag: &str| -> io::Result<u32> {
        let out = Command::new("id").arg(flag).arg(user).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("no user {user} to run PostgreSQL as")))
    };
    Ok((id("-u")?, id("-g")?))
}
