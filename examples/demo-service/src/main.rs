//! The `demo-service` binary; see the library for what it does.

fn main() -> std::process::ExitCode {
    demo_service::run(std::env::args().skip(1))
}
