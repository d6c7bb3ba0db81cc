//! `sandbar_tests::fuzzing::dockerfile`: the API's and the runner's Dockerfile parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sandbar_tests::fuzzing::dockerfile(data));
