//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`) and for the test that
//! replays their corpora on every `cargo xtask test`. Each takes arbitrary bytes; none may
//! panic, hang or grow without bound.

pub use crate::bgp::fuzz::{message as bgp_message, session as bgp_session};

/// The config loader on arbitrary text: an error is fine, a panic is not.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = crate::config::parse(text, "fuzz.toml")
    {
        let _ = e.to_string();
    }
}

/// A control connection that sends `data` and closes: read within the limits, decoded,
/// answered with exactly one JSON line (an error for anything malformed).
pub fn control(data: &[u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // As in the agent (Rust's runtime does this for a `main`; libFuzzer's main does not): a
    // write to a closed socket is an error, not a signal.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::net::UnixStream::pair().expect("socketpair");
        let access = crate::control::Access { group: None };
        let serve = tokio::spawn(crate::control::serve_one(server, access, async |request| {
            crate::control::Response::ok(format!("{request:?}")).into()
        }));
        let input = data.to_vec();
        let (mut read, mut write) = client.split();
        let send = async move {
            // The server may stop reading at its limit: a failed write is expected then.
            write.write_all(&input).await.ok();
            write.shutdown().await.ok();
        };
        let mut answer = Vec::new();
        let receive = read.read_to_end(&mut answer);
        let ((), received) = tokio::join!(send, receive);
        received.expect("the answer can be read");
        serve.await.expect("serve_one ends").ok();
        let text = String::from_utf8(answer).expect("the answer is UTF-8");
        let line = text.lines().next().unwrap_or_default();
        let response: crate::control::Response =
            serde_json::from_str(line).expect("the answer is one JSON response");
        let _ = response;
    });
}
