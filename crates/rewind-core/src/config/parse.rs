//! Reading and validating `rewind.toml` (to be written: see the config work item).
