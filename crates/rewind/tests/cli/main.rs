//! End-to-end tests of the real `rewind` binary: real files, real processes, real SIGKILL.
//! One test binary (link time on 2 cores), one module per concern.

mod common;

mod audit;
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
