//! Kernel programs live in the `collector` binary target of this crate; this
//! empty library only lets `collector/build.rs` depend on the crate so that
//! cargo rebuilds the embedded object when they change.
#![no_std]
