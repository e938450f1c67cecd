//! The end-to-end tests of mpiexec-docker live in this crate's test targets (`e2e/*.rs`, with their
//! shared helpers in `e2e/common/`); this library is empty.
