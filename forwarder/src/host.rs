//! The one host tool the agent still runs: `ethtool`, for the one-shot VLAN offload settings
//! of the configured ports (everything else goes over netlink, see `netlink`). A failure says
//! what it ran.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("`{command}`: {message}")]
pub struct Error {
    pub command: String,
    pub message: String,
}

/// Runs `program args…`, returns its stdout; a non-zero exit is an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
