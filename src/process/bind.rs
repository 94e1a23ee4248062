//! Honest start-up: every listen address is bound once before pingora gets it, so a taken
//! port ends the process at once with the address and the OS error. pingora would retry for
//! a while and then panic in a runtime thread, leaving the process up (README, Operations).

use std::net::SocketAddr;
use std::sync::Arc;

use super::Finisher;

/// Binds and releases each `(field, address)`; the first that fails is the error.
pub fn check_listen_addresses(addrs: &[(&str, SocketAddr)]) -> Result<(), String> {
    for (field, addr) in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let fix = match e.kind() {
                std::io::ErrorKind::AddrInUse => "another process listens there: stop it, choose another address, or to replace a running gateway start this one with --upgrade",
                std::io::ErrorKind::PermissionDenied => "ports below 1024 need CAP_NET_BIND_SERVICE: choose a higher port or grant the capability",
                std::io::ErrorKind::AddrNotAvailable => "no interface of this host has that address: use one it has, or 0.0.0.0",
                _ => "fix the address or free it",
            };
            return Err(format!("{field}: cannot listen on {addr}: {e}; {fix}"));
        }
    }
    Ok(())
}

/// The backstop for a listener lost between the check and pingora's bind (or handed over
/// wrongly): pingora panics in a runtime thread ("Failed to build listeners"), which would
/// leave the process up. This hook logs it and ends the process with exit 1 after the final
/// flush.
pub fn exit_on_listener_panic(finisher: Arc<Finisher>) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Failed to build listeners") {
            log::error!("a listener could not start: {message}; exiting");
            let finisher = finisher.clone();
            // Not on this thread: it is a runtime worker, and the flush needs a runtime.
            let _ = std::thread::Builder::new()
                .name("listener failure".into())
                .spawn(move || finisher.exit(1));
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_the_os_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = check_listen_addresses(&[("server.listen", addr)]).unwrap_err();
        assert!(
            e.starts_with(&format!("server.listen: cannot listen on {addr}: ")),
            "{e}"
        );
        assert!(e.contains("os error 98"), "{e}");
        assert!(e.contains("--upgrade"), "{e}");
    }

    #[test]
    fn free_ports_pass_and_stay_free() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        check_listen_addresses(&[("server.listen", addr)]).unwrap();
        std::net::TcpListener::bind(addr).unwrap();
    }
}
