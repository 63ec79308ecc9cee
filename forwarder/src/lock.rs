//! One agent per state directory, pin directory and control socket: each is locked (`flock`)
//! for the life of the process, so a second agent started by mistake refuses at once with a
//! one-line reason instead of fighting the first over the maps. The kernel drops the locks
//! when the process dies, however it dies: a killed agent never leaves a lock behind.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another forwarder agent{pid} is running with {what} {path}; stop it first",
        pid = pid_text(*.pid),
        path = .path.display()
    )]
    Held {
        what: &'static str,
        path: PathBuf,
        pid: Option<u32>,
    },
    #[error("locking {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// The locks of a running agent; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Locks {
    _files: Vec<File>,
}

fn flock(file: &File) -> io::Result<bool> {
    // SAFETY: `file` is an open descriptor for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Locks `path` (a lock file, created if needed) and writes our pid into it.
fn lock_file(what: &'static str, shown: &Path, path: &Path) -> Result<File, Error> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    // Never through a symlink, and only a regular file: a lock path in a directory others
    // can write must not make the agent truncate something else.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(io_err(io::Error::other("not a regular file")));
    }
    if !flock(&file).map_err(io_err)? {
        let mut text = String::new();
        let pid = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| text.trim().parse().ok());
        return Err(Error::Held {
            what,
            path: shown.to_owned(),
            pid,
        });
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(file)
}

/// Locks a directory itself (for a bpf filesystem, which holds no regular files).
fn lock_dir(what: &'static str, dir: &Path, pid: Option<u32>) -> Result<File, Error> {
    let io_err = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_err)?;
    let file = File::open(dir).map_err(io_err)?;
    if !flock(&file).map_err(io_err)? {
        return Err(Error::Held {
            what,
            path: dir.to_owned(),
            pid,
        });
    }
    Ok(file)
}

/// Takes the state directory's and the control socket's locks, in that order (the pid of a
/// holder is read from either). The pin directory's follows with [`Locks::lock_pins`] once
/// that directory exists: an agent refused here has created nothing on the bpf filesystem.
pub fn acquire(state_dir: &Path, socket: &Path) -> Result<Locks, Error> {
    let state = lock_file("state_dir", state_dir, &state_dir.join("agent.lock"))?;
    let mut socket_lock = socket.as_os_str().to_owned();
    socket_lock.push(".lock");
    let socket_file = lock_file("control_socket", socket, Path::new(&socket_lock))?;
    Ok(Locks {
        _files: vec![state, socket_file],
    })
}

impl Locks {
    /// Adds the pin directory's lock. The directory must be on a bpf filesystem.
    pub fn lock_pins(&mut self, pin_dir: &Path) -> Result<(), Error> {
        self._files.push(lock_dir("pin_dir", pin_dir, None)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() -> Result<(), Error> {
        let dir = std::env::temp_dir().join(format!("forwarder-lock-{}", std::process::id()));
        let (state, socket, pins) = (dir.join("state"), dir.join("run/f.sock"), dir.join("pins"));
        let lock = |state: &Path, socket: &Path| -> Result<Locks, Error> {
            let mut locks = acquire(state, socket)?;
            locks.lock_pins(&pins)?;
            Ok(locks)
        };
        let first = lock(&state, &socket)?;
        let err = lock(&state, &socket).expect_err("second lock");
        let text = err.to_string();
        assert!(
            text.contains(&format!("(pid {})", std::process::id())) && text.contains("state_dir"),
            "{text}"
        );
        // Another state dir but the same socket: the socket is what is refused.
        let err = lock(&dir.join("state2"), &socket).expect_err("socket");
        assert!(err.to_string().contains("control_socket"), "{err}");
        let err = lock(&dir.join("state3"), &dir.join("other.sock")).expect_err("pins");
        assert!(err.to_string().contains("pin_dir"), "{err}");
        drop(first);
        drop(lock(&state, &socket)?);
        fs::remove_dir_all(&dir).map_err(|source| Error::Io { path: dir, source })?;
        Ok(())
    }
}
