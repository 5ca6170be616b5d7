//! Small programs that use pgproof as a library: see `backup_to_directory.rs` and
//! `verify_with_invariant.rs` beside this crate. The library itself is empty.
