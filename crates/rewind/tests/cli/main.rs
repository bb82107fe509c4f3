//! End-to-end tests of the real `rewind` binary: real files, real processes, real SIGKILL.
//! One test binary (link time on 2 cores), one module per concern.

// The tests start the binary (and kill, copy, inspect) directly; rewind itself starts its
// children through rewind_proc only (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

mod audit;
mod backup_debris;
mod children;
mod config;
mod crash;
mod db;
mod examples;
mod lock;
mod pg;
mod pitr;
mod resume;
mod secrets;
mod sets;
mod store;
mod story;
mod usage;
mod watch;
