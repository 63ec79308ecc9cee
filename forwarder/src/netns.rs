//! Named network namespaces as iproute2 keeps them (`/run/netns/NAME`, a bind mount of a
//! namespace file), made and removed with syscalls instead of `ip netns`, and running code
//! inside one. Also the one process-wide fix-up that named namespaces and pinned maps need:
//! living in a mount namespace that outlives the agent.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _, fs::OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

/// Where named namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const RUN_DIR: &str = "/run/netns";
const NSFS_MAGIC: i64 = 0x6e73_6673;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("namespace thread panicked")]
    Thread,
    #[error(
        "this agent runs in a private mount namespace (as `ip netns exec` gives it) where the \
         control namespaces it names and the maps it pins would die with it, and it cannot join \
         its parent's ({0}); start it with `nsenter --net=/run/netns/NAME` or from systemd"
    )]
    PrivateMounts(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn cstring(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Io {
        what: "path with a NUL byte",
        path: path.to_owned(),
        source: io::ErrorKind::InvalidInput.into(),
    })
}

/// The filesystem type of `path` (`statfs`), following symlinks.
fn fs_type(path: &Path) -> Result<i64, Error> {
    let c = cstring(path)?;
    // SAFETY: statfs writes plain data into `st`; `c` is NUL-terminated and outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io_err("statfs", path)(io::Error::last_os_error()));
    }
    Ok(st.f_type)
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool, Error> {
    Ok(fs_type(path)? == BPF_FS_MAGIC)
}

pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// What [`ensure`] found under `/run/netns/NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// A live namespace: left as it is.
    Existing,
    /// Nothing: a new namespace was made.
    Created,
    /// A file that is not a namespace (its bind mount died with another mount namespace):
    /// replaced by a new namespace.
    ReplacedStale,
    /// The name was gone but the caller still held the namespace: the name points to it again.
    Restored,
}

/// An open namespace and its identity (the nsfs inode: equal inodes, same namespace).
#[derive(Debug)]
pub struct Namespace {
    pub file: File,
    pub inode: u64,
}

impl Namespace {
    fn from_file(file: File, path: &Path) -> Result<Self, Error> {
        let inode = file.metadata().map_err(io_err("stat", path))?.ino();
        Ok(Self { file, inode })
    }

    /// Opens the namespace file at `path` (a named namespace, `/proc/PID/ns/net`, ...).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        Self::from_file(file, path)
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<Self, Error> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Runs `f` on a thread of its own that has entered this namespace (a namespace switch
    /// never happens on a runtime thread), and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
        let fd = self.file.as_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `fd` is an open namespace file for the duration of the call;
                    // setns only changes this short-lived thread's network namespace.
                    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io_err("setns into", Path::new("namespace"))(
                            io::Error::last_os_error(),
                        ));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| Error::Thread)?
        })
    }
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that a namespace named here
/// is seen from every mount namespace that is its peer or slave.
fn prepare_run_dir() -> Result<(), Error> {
    let dir = Path::new(RUN_DIR);
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let c = cstring(dir)?;
    for attempt in 0..2 {
        // SAFETY: constant or NUL-terminated strings; mount(2) has no memory preconditions.
        let rc = unsafe {
            libc::mount(
                c"".as_ptr(),
                c.as_ptr(),
                c"none".as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) || attempt == 1 {
            return Err(io_err("making a shared mount of", dir)(err));
        }
        // Not a mount point yet: bind it onto itself, then try again.
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io_err("bind-mounting", dir)(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Binds the namespace `fd` refers to onto `target` (an existing empty file).
fn bind(source: &Path, target: &Path) -> Result<(), Error> {
    let (s, t) = (cstring(source)?, cstring(target)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io_err("bind-mounting a namespace on", target)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn create_mount_point(path: &Path) -> Result<(), Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map(drop)
        .map_err(io_err("creating", path))
}

/// Unmounts (if mounted) and removes `path`.
fn remove_entry(path: &Path) -> Result<(), Error> {
    let c = cstring(path)?;
    // SAFETY: NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (a stale file), ENOENT: already gone.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(io_err("unmounting", path)(err));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// A new network namespace named `name`.
fn create(name: &str) -> Result<Namespace, Error> {
    prepare_run_dir()?;
    let target = path(name);
    create_mount_point(&target)?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only gives this short-lived thread a new network namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io_err("unshare(CLONE_NEWNET) for", &target)(
                        io::Error::last_os_error(),
                    ));
                }
                let own = Path::new("/proc/thread-self/ns/net");
                bind(own, &target)?;
                Namespace::open(own)
            })
            .join()
            .map_err(|_| Error::Thread)?
    });
    if made.is_err()
        && let Err(e) = remove_entry(&target)
    {
        tracing::warn!(netns = name, error = %e, "cleaning up a half-made namespace");
    }
    made
}

/// The namespace named `name`, made if missing. A file that is not a namespace (left by an
/// agent whose mount namespace died) is replaced; a name that vanished while `held` still
/// refers to the namespace is pointed at it again, so nothing inside it is disturbed.
pub fn ensure(name: &str, held: Option<&Namespace>) -> Result<(Namespace, Found), Error> {
    let target = path(name);
    let stale = match fs_type(&target) {
        Ok(NSFS_MAGIC) => return Ok((Namespace::open(&target)?, Found::Existing)),
        Ok(_) => true,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if stale {
        remove_entry(&target)?;
    }
    if let Some(ns) = held {
        prepare_run_dir()?;
        create_mount_point(&target)?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", ns.file.as_raw_fd()));
        if let Err(e) = bind(&source, &target) {
            remove_entry(&target)?;
            return Err(e);
        }
        return Ok((Namespace::open(&target)?, Found::Restored));
    }
    let ns = create(name)?;
    Ok((
        ns,
        if stale {
            Found::ReplacedStale
        } else {
            Found::Created
        },
    ))
}

/// Removes the name; the namespace itself goes when nothing else holds it.
pub fn delete(name: &str) -> Result<(), Error> {
    remove_entry(&path(name))
}

/// Whether a live namespace is named `name`.
pub fn exists(name: &str) -> bool {
    matches!(fs_type(&path(name)), Ok(NSFS_MAGIC))
}

fn mount_ns_inode(pid: &str) -> io::Result<u64> {
    Ok(fs::metadata(format!("/proc/{pid}/ns/mnt"))?.ino())
}

/// Whether bind mounts made under `dir` in this mount namespace are seen by other mount
/// namespaces: the mount holding `dir` is shared (`shared:N` in mountinfo).
fn propagates(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // The longest mount point that is a prefix of `dir` holds it.
    info.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            let optional: Vec<&str> = fields.skip(1).take_while(|f| *f != "-").collect();
            Some((PathBuf::from(mount_point), optional))
        })
        .filter(|(mount_point, _)| dir.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.as_os_str().len())
        .is_some_and(|(_, optional)| optional.iter().any(|f| f.starts_with("shared:")))
}

/// `ip netns exec` runs a command in a mount namespace of its own, a slave of the host's,
/// with a fresh sysfs on `/sys`: control namespaces named there and maps pinned on a bpffs
/// mounted there would die with the agent. When that is the case and the parent process (who
/// started us) lives in another mount namespace, join the parent's. Must run before any
/// thread is started (setns into a mount namespace needs a single-threaded process). Returns
/// what it did, for the log.
pub fn join_parent_mount_namespace(pin_dir: &Path) -> Result<Option<String>, Error> {
    let bpf_root = Path::new("/sys/fs/bpf");
    let pins_ok = if pin_dir.starts_with(bpf_root) {
        is_bpffs(bpf_root).unwrap_or(false)
    } else {
        true
    };
    let names_ok = propagates(Path::new(RUN_DIR));
    if pins_ok && names_ok {
        return Ok(None);
    }
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() }.to_string();
    let (own, parent) = (mount_ns_inode("self"), mount_ns_inode(&ppid));
    let (Ok(own), Ok(parent)) = (own, parent) else {
        return Err(Error::PrivateMounts(format!(
            "cannot read /proc/{ppid}/ns/mnt"
        )));
    };
    if own == parent {
        // Started from a shell that is itself in that namespace: nothing better to join.
        return Ok(Some(format!(
            "running in a private mount namespace shared with the parent (pid {ppid}): \
             control namespaces and pins live as long as it does"
        )));
    }
    let target = PathBuf::from(format!("/proc/{ppid}/ns/mnt"));
    let file = File::open(&target).map_err(|e| Error::PrivateMounts(e.to_string()))?;
    // SAFETY: `file` is an open mount namespace file; the process is single-threaded here.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(Error::PrivateMounts(io::Error::last_os_error().to_string()));
    }
    Ok(Some(format!(
        "started in a private mount namespace (ip netns exec?): joined the parent's (pid \
         {ppid}) so that control namespaces and pinned maps outlive this process"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_namespace() -> Result<(), Error> {
        let file = std::env::temp_dir().join(format!("forwarder-netns-{}", std::process::id()));
        fs::write(&file, b"").map_err(io_err("writing", &file))?;
        assert_ne!(fs_type(&file)?, NSFS_MAGIC);
        fs::remove_file(&file).map_err(io_err("removing", &file))?;
        Ok(())
    }
}
