//! `sandbar_daemon::fuzzing::terminal_message` (see there for what the input means and what is checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sandbar_daemon::fuzzing::terminal_message(data));
