//! llama.cpp's RPC backend (ggml-rpc): remote devices for a model's layers (`--rpc`), and
//! serving this machine's devices to another process (`gearbx-rpc-server`). Everything goes
//! through the backend registry and `ggml_backend_reg_get_proc_address`, as llama.cpp's own
//! `--rpc` does, so a host's llama.cpp without the RPC backend links and says so at run time.

use std::convert::Infallible;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use super::sys;
use crate::error::{exit, Error, Result};

/// The port llama.cpp's rpc-server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 50052;
/// Seconds a call to a server may take before the client gives up (`--rpc-timeout`).
pub const DEFAULT_TIMEOUT_S: u32 = 120;
/// Seconds the reachability check before connecting waits for each server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many servers (ggml-rpc's GGML_RPC_MAX_SERVERS).
pub const MAX_SERVERS: usize = 16;
/// An endpoint longer than this is refused (a host name is at most 253 bytes).
const MAX_ENDPOINT_LEN: usize = 261;

/// Parses llama.cpp's `--rpc` value: `host:port` endpoints separated by commas.
pub fn parse_endpoints(s: &str) -> Result<Vec<String>> {
    let bad = |m: String| Error::InvalidParam(format!("--rpc: {m}"));
    let mut out: Vec<String> = Vec::new();
    for e in s.split(',').map(str::trim) {
        if e.is_empty() {
            return Err(bad(format!(
                "an empty endpoint in {s:?} (host:port,host:port)"
            )));
        }
        if e.len() > MAX_ENDPOINT_LEN {
            return Err(bad(format!(
                "endpoint of {} bytes (at most {MAX_ENDPOINT_LEN})",
                e.len()
            )));
        }
        let Some((host, port)) = e.rsplit_once(':') else {
            return Err(bad(format!(
                "{e:?} has no port (host:port, e.g. 127.0.0.1:{DEFAULT_PORT})"
            )));
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err(bad(format!("{e:?}: not a host name or IPv4 address")));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad(format!("{e:?}: the port must be 1-65535"))),
        }
        if out.iter().any(|o| o == e) {
            return Err(bad(format!("{e} is listed twice")));
        }
        out.push(e.to_string());
    }
    if out.len() > MAX_SERVERS {
        return Err(bad(format!(
            "{} servers (at most {MAX_SERVERS})",
            out.len()
        )));
    }
    Ok(out)
}

/// The registry entry of the RPC backend, or an error naming what is missing.
fn rpc_reg() -> Result<sys::ggml_backend_reg_t> {
    super::init();
    // SAFETY: a NUL-terminated name; the registry is initialized.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return Err(Error::InvalidParam(
            "--rpc: this llama.cpp was built without its RPC backend (GGML_RPC=ON)".into(),
        ));
    }
    Ok(reg)
}

/// A function of the RPC backend by name, or an error naming it.
fn proc(reg: sys::ggml_backend_reg_t, name: &CStr) -> Result<*mut c_void> {
    // SAFETY: reg is the registered RPC backend; the name is NUL-terminated.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if f.is_null() {
        return Err(Error::InvalidParam(format!(
            "--rpc: this llama.cpp's RPC backend has no {}",
            name.to_string_lossy()
        )));
    }
    Ok(f)
}

/// Checks that a TCP connection to `endpoint` opens within a few seconds, so an unreachable
/// server is one clear error instead of an abort inside llama.cpp.
fn probe(endpoint: &str) -> Result<()> {
    let lost = |why: String| Error::Rpc(format!("cannot reach the RPC server {endpoint}: {why}"));
    let addrs: Vec<SocketAddr> = endpoint
        .to_socket_addrs()
        .map_err(|e| lost(e.to_string()))?
        .filter(SocketAddr::is_ipv4) // ggml-rpc connects over IPv4
        .collect();
    let Some(addr) = addrs.first() else {
        return Err(lost("no IPv4 address".into()));
    };
    TcpStream::connect_timeout(addr, PROBE_TIMEOUT)
        .map(drop)
        .map_err(|e| lost(e.to_string()))
}

/// Registers the devices of each RPC server with llama.cpp, so a model loaded afterwards splits
/// its offloaded layers across them (as llama.cpp's `--rpc`); returns their device names
/// (`RPC0`, `RPC1`, …). Every send and receive to a server is bounded by `timeout_s` seconds
/// (0: unbounded). Call [`exit_on_abort`] first in a program: ggml-rpc aborts the process when
/// a server is lost mid-run.
pub fn add_servers(endpoints: &[String], timeout_s: u32) -> Result<Vec<String>> {
    let reg = rpc_reg()?;
    type SetTimeout = unsafe extern "C" fn(c_int);
    type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
    // SAFETY: our patch 0006 exports this name with this signature.
    let set_timeout = unsafe {
        std::mem::transmute::<*mut c_void, SetTimeout>(proc(reg, c"ggml_backend_rpc_set_timeout")?)
    };
    // SAFETY: ggml-rpc exports this name with this signature (ggml-rpc.h).
    let add_server = unsafe {
        std::mem::transmute::<*mut c_void, AddServer>(proc(reg, c"ggml_backend_rpc_add_server")?)
    };
    // SAFETY: sets an atomic read by later connections.
    unsafe { set_timeout(timeout_s.min(i32::MAX as u32) as c_int) };
    let mut names = Vec::new();
    for e in endpoints {
        probe(e)?;
        let c = CString::new(e.as_str())
            .map_err(|_| Error::InvalidParam(format!("--rpc: {e:?} holds a NUL byte")))?;
        // SAFETY: a NUL-terminated endpoint that answered; ggml-rpc connects and asks for its
        // devices (aborting, through exit_on_abort's handler, if the handshake fails).
        let r = unsafe { add_server(c.as_ptr()) };
        if r.is_null() {
            return Err(Error::Rpc(format!("the RPC server {e} offers no device")));
        }
        // SAFETY: r is a registry entry ggml-rpc made for this endpoint; registering it twice
        // is prevented by parse_endpoints' duplicate check and add_server's own map.
        unsafe { sys::ggml_backend_register(r) };
        // SAFETY: r is valid; every index below its count names a device.
        let n = unsafe { sys::ggml_backend_reg_dev_count(r) };
        for i in 0..n {
            // SAFETY: as above; device names are NUL-terminated strings owned by ggml-rpc.
            let name = unsafe {
                CStr::from_ptr(sys::ggml_backend_dev_name(sys::ggml_backend_reg_dev_get(
                    r, i,
                )))
            };
            names.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// ggml_backend_rpc_invalidate_graphs (our patch 0007), where this llama.cpp has it.
fn invalidate_fn() -> Option<unsafe extern "C" fn()> {
    static F: OnceLock<Option<unsafe extern "C" fn()>> = OnceLock::new();
    *F.get_or_init(|| {
        let reg = rpc_reg().ok()?;
        let p = proc(reg, c"ggml_backend_rpc_invalidate_graphs").ok()?;
        // SAFETY: our patch 0007 exports this name with this signature.
        Some(unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(p) })
    })
}

/// Whether a shift can make remote devices resend their graphs ([`invalidate_graphs`]), so
/// contexts on them may keep llama.cpp's graph reuse.
pub fn graphs_follow_shifts() -> bool {
    invalidate_fn().is_some()
}

/// Makes the next compute on every remote device send its graph in full: after a shift, whose
/// new weights the graphs the servers hold do not point at. Does nothing where the patch is
/// absent (then [`graphs_follow_shifts`] is false and contexts rebuild their graphs).
pub fn invalidate_graphs() {
    if let Some(f) = invalidate_fn() {
        // SAFETY: the function only increments an atomic counter.
        unsafe { f() }
    }
}

/// Whether a device name is one of ggml-rpc's.
pub fn is_remote(device: &str) -> bool {
    device
        .strip_prefix("RPC")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The names of the devices llama.cpp knows.
fn device_names() -> Vec<String> {
    // SAFETY: reads the device registry; indices below its count are valid.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .map(|i| {
            // SAFETY: as above; names are static NUL-terminated strings.
            unsafe { CStr::from_ptr(sys::ggml_backend_dev_name(sys::ggml_backend_dev_get(i))) }
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

static PROGRAM: OnceLock<String> = OnceLock::new();

/// ggml's abort hook while remote devices are in use: one line on stderr (the program's name,
/// ggml's message) and exit code [`exit::RPC`], instead of an abort with a backtrace.
unsafe extern "C" fn abort_exit(message: *const c_char) {
    let msg = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes a NUL-terminated message.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    };
    // ggml writes "file:line: message"; the build's file path says nothing to a user.
    let msg = msg
        .split_once(": ")
        .filter(|(at, _)| {
            at.rsplit_once(':')
                .is_some_and(|(_, l)| l.parse::<u32>().is_ok())
        })
        .map_or(msg.as_str(), |(_, m)| m);
    let program = PROGRAM.get().map_or("gearbx", String::as_str);
    let _ = writeln!(
        std::io::stderr(),
        "{program}: error: llama.cpp stopped ({}): an RPC server was lost, timed out or refused \
         the connection",
        msg.trim()
    );
    extern "C" {
        fn _exit(code: c_int) -> !;
    }
    // SAFETY: _exit ends the process at once (no unwinding through C, no atexit handlers that
    // could wait on a thread ggml-rpc left blocked).
    unsafe { _exit(exit::RPC as c_int) }
}

/// Makes a ggml abort end the process as [`abort_exit`] says (for programs using `--rpc`:
/// ggml-rpc aborts when a server disconnects, times out or fails its handshake).
pub fn exit_on_abort(program: &str) {
    let _ = PROGRAM.set(program.to_string());
    // SAFETY: installs a process-wide callback that never returns into ggml.
    unsafe { sys::ggml_set_abort_callback(Some(abort_exit)) };
}

/// Serves this machine's devices to RPC clients at `host:port` until the process ends:
/// `devices` by name (empty: every GPU, or the CPU when there is none), `threads` for the CPU
/// backend, `cache` a folder where ggml-rpc keeps large tensors it was sent (None: no cache).
/// Returns only on failure to start.
pub fn serve(
    host: std::net::Ipv4Addr,
    port: u16,
    devices: &[String],
    threads: usize,
    cache: Option<&Path>,
) -> Result<Infallible> {
    let reg = rpc_reg()?;
    // A port already taken, or an address not of this machine, is one clear error here.
    TcpListener::bind((host, port))
        .map(drop)
        .map_err(|e| Error::Rpc(format!("cannot listen on {host}:{port}: {e}")))?;
    let mut devs = Vec::new();
    if devices.is_empty() {
        // SAFETY: reads the device registry; indices below its count are valid.
        let n = unsafe { sys::ggml_backend_dev_count() };
        for i in 0..n {
            // SAFETY: as above.
            let d = unsafe { sys::ggml_backend_dev_get(i) };
            // SAFETY: d is a registered device.
            let ty = unsafe { sys::ggml_backend_dev_type(d) };
            if ty == sys::GGML_BACKEND_DEVICE_TYPE_GPU || ty == sys::GGML_BACKEND_DEVICE_TYPE_IGPU {
                devs.push(d);
            }
        }
        if devs.is_empty() {
            // SAFETY: the CPU backend is always registered.
            devs.push(unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) });
        }
    } else {
        for name in devices {
            let c = CString::new(name.as_str())
                .map_err(|_| Error::InvalidParam(format!("--device: {name:?} holds a NUL byte")))?;
            // SAFETY: a NUL-terminated name; null when unknown.
            let d = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
            if d.is_null() || is_remote(name) {
                return Err(Error::InvalidParam(format!(
                    "--device: no local device {name:?} (this machine has: {})",
                    device_names().join(", ")
                )));
            }
            devs.push(d);
        }
    }
    let endpoint = CString::new(format!("{host}:{port}")).expect("no NUL in an address");
    let cache = match cache {
        Some(p) => {
            std::fs::create_dir_all(p).map_err(|e| {
                Error::io(format!("cannot make the cache folder {}", p.display()), e)
            })?;
            Some(CString::new(p.to_string_lossy().as_bytes()).map_err(|_| {
                Error::InvalidParam(format!("--cache: {} holds a NUL byte", p.display()))
            })?)
        }
        None => None,
    };
    type StartServer = unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        usize,
        usize,
        *mut sys::ggml_backend_dev_t,
    );
    // SAFETY: ggml-rpc exports this name with this signature (ggml-rpc.h).
    let start = unsafe {
        std::mem::transmute::<*mut c_void, StartServer>(proc(
            reg,
            c"ggml_backend_rpc_start_server",
        )?)
    };
    // SAFETY: endpoint and cache are NUL-terminated (cache may be null); devs holds
    // devs.len() registered devices. It serves until the process ends, returning only when
    // it cannot listen.
    unsafe {
        start(
            endpoint.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads.max(1),
            devs.len(),
            devs.as_mut_ptr(),
        )
    };
    Err(Error::Rpc(format!(
        "the RPC server on {host}:{port} stopped (could it listen there?)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_llama_cpp_spells_them() {
        assert_eq!(
            parse_endpoints("127.0.0.1:50052, host-b:7000").unwrap(),
            ["127.0.0.1:50052", "host-b:7000"]
        );
        for bad in [
            "",
            "a:1,",
            "127.0.0.1",
            "h:0",
            "h:65536",
            "h:x",
            ":5",
            "a:1,a:1",
            "a b:1",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad:?} accepted");
        }
        let many = (1..=17)
            .map(|p| format!("h:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_endpoints(&many)
            .unwrap_err()
            .to_string()
            .contains("at most 16"));
        assert!(parse_endpoints(&format!("{}:1", "h".repeat(300))).is_err());
    }

    #[test]
    fn remote_device_names() {
        assert!(is_remote("RPC0") && is_remote("RPC15"));
        assert!(
            !is_remote("RPC") && !is_remote("CPU") && !is_remote("RPCx") && !is_remote("CUDA0")
        );
    }
}
