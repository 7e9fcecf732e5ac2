//! A container engine for the suites that run containers (compose, the
//! fleet, `docker load` of the OCI image): the engine that already answers
//! (`DOCKER_HOST`, else the default socket), or a private `dockerd` this
//! process starts and stops.
//!
//! The private daemon has its own socket, data root and exec root in a temp
//! dir, and leaves the host's firewall and default bridge alone
//! (`--iptables=false --bridge=none`): containers reach each other on the
//! networks a test creates, and the host reaches the ports they publish on
//! 127.0.0.1, but no container has a route out (no NAT). It is shared by
//! the tests of one process and stopped when the last of them lets go of
//! it: no daemon, container, network or mount is left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::rls::stop_child;

/// A container engine the `docker` and Compose CLIs talk to.
pub struct Engine {
    /// `DOCKER_HOST` for the CLIs: `None` uses their own default.
    host: Option<String>,
    daemon: Option<PrivateDaemon>,
    compose: ComposeCli,
}

struct PrivateDaemon {
    child: Child,
    dir: tempfile::TempDir,
}

/// Which Compose the machine has: the `docker compose` plugin, or the
/// standalone `docker-compose` (Debian's, v1.29).
#[derive(Clone, Copy, Debug)]
enum ComposeCli {
    Plugin,
    Standalone,
}

static SHARED: Mutex<Weak<Engine>> = Mutex::new(Weak::new());

/// The engine of this process: the one in use by another test, else the
/// one that answers, else a private daemon started now.
///
/// Panics when there is none and none can be started: `make bootstrap`
/// installs Debian's `docker.io` and `docker-compose`.
pub fn engine() -> Arc<Engine> {
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(engine) = shared.upgrade() {
        return engine;
    }
    let engine = Arc::new(Engine::answering().unwrap_or_else(Engine::private));
    *shared = Arc::downgrade(&engine);
    engine
}

impl Engine {
    /// The engine the CLIs reach with the environment as it is, if one
    /// answers.
    pub fn answering() -> Option<Engine> {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        info.status.success().then(|| Engine {
            host: None,
            daemon: None,
            compose: compose_cli(None),
        })
    }

    /// Starts a private `dockerd` (as root) and waits until it answers.
    #[track_caller]
    pub fn private() -> Engine {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "no container engine answers and a private dockerd needs root: \
             start Docker, or set DOCKER_HOST"
        );
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .expect("dockerd not found: run `make bootstrap` (installs Debian's docker.io)");
        // Short: the daemon's and containerd's sockets live under it.
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-dockerd-")
            .tempdir_in("/tmp")
            .expect("temp dir for a private dockerd");
        let root = dir.path();
        let socket = root.join("docker.sock");
        let log = fs::File::create(root.join("dockerd.log")).expect("dockerd log file");
        let mut command = Command::new(dockerd);
        command
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dockerd log file"))
            .stderr(log);
        // Should this process die without dropping the engine, dockerd
        // gets SIGTERM and stops its containers itself.
        let child =
            crate::envoy::spawn_guarded_with(command, libc::SIGTERM).expect("start dockerd");
        let host = format!("unix://{}", socket.display());
        let mut engine = Engine {
            compose: compose_cli(Some(&host)),
            host: Some(host),
            daemon: Some(PrivateDaemon { child, dir }),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = engine
                .docker()
                .args(["info", "--format", "{{.ServerVersion}}"])
                .output();
            if info.is_ok_and(|out| out.status.success()) {
                return engine;
            }
            let daemon = engine.daemon.as_mut().expect("private daemon");
            let exited = daemon.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    fs::read_to_string(daemon.dir.path().join("dockerd.log")).unwrap_or_default();
                panic!(
                    "the private dockerd did not come up ({}):\n{log}",
                    exited.map_or("timed out after 60 s".to_owned(), |s| s.to_string())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The private daemon's pid, if this process started it.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|daemon| daemon.child.id())
    }

    /// `docker`, pointed at this engine.
    pub fn docker(&self) -> Command {
        let mut command = Command::new("docker");
        self.point(&mut command);
        command
    }

    /// Compose for `project` (`-p`) with `file` (`-f`), pointed at this
    /// engine.
    pub fn compose(&self, project: &str, file: &Path) -> Command {
        let mut command = match self.compose {
            ComposeCli::Plugin => {
                let mut command = Command::new("docker");
                command.arg("compose");
                command
            }
            ComposeCli::Standalone => Command::new("docker-compose"),
        };
        self.point(&mut command);
        command
            .arg("--project-name")
            .arg(project)
            .arg("--file")
            .arg(file);
        command
    }

    /// Runs `command`, returning its stdout, or an error carrying its
    /// status and output when it fails.
    pub fn try_run(&self, command: &mut Command) -> anyhow::Result<String> {
        let out = command
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run {command:?}: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Engine::try_run`], panicking with the error when it fails.
    #[track_caller]
    pub fn run(&self, command: &mut Command) -> String {
        self.try_run(command).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `docker ARGS`, returning stdout; panics when it fails.
    #[track_caller]
    pub fn docker_run(&self, args: &[&str]) -> String {
        self.run(self.docker().args(args))
    }

    /// The ids of containers, networks and volumes labelled with Compose
    /// project `project`, as `kind id` lines: empty once `down -v` cleaned
    /// up after it.
    pub fn project_leftovers(&self, project: &str) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={project}");
        let mut found = Vec::new();
        for (kind, args) in [
            (
                "container",
                vec!["ps", "--all", "--quiet", "--filter", &label],
            ),
            (
                "network",
                vec!["network", "ls", "--quiet", "--filter", &label],
            ),
            (
                "volume",
                vec!["volume", "ls", "--quiet", "--filter", &label],
            ),
        ] {
            for id in self
                .docker_run(&args)
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                found.push(format!("{kind} {id}"));
            }
        }
        found
    }

    fn point(&self, command: &mut Command) {
        command.stdin(Stdio::null());
        if let Some(host) = &self.host {
            command.env("DOCKER_HOST", host);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        // dockerd stops what still runs (a test that panicked before its
        // `down`), then its containerd, on SIGTERM.
        stop_child(&mut daemon.child, Duration::from_secs(30));
        unmount_under(daemon.dir.path());
        // The data root holds files owned by container users; TempDir's
        // own removal ignores errors, this reports nothing either: a
        // leftover under /tmp is not worth failing a test for.
        let _ = fs::remove_dir_all(daemon.dir.path());
    }
}

/// Detaches every mount under `dir` (overlays of containers a killed
/// daemon could not clean up, its netns files), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|target| target.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|target| std::cmp::Reverse(target.len()));
    for target in targets {
        let Ok(path) = std::ffi::CString::new(target) else {
            continue;
        };
        // SAFETY: path is a valid NUL-terminated string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

fn compose_cli(host: Option<&str>) -> ComposeCli {
    let mut plugin = Command::new("docker");
    plugin.args(["compose", "version"]).stdin(Stdio::null());
    if let Some(host) = host {
        plugin.env("DOCKER_HOST", host);
    }
    if plugin.output().is_ok_and(|out| out.status.success()) {
        ComposeCli::Plugin
    } else {
        ComposeCli::Standalone
    }
}
