//! The seeded fuzz loop of the Dockerfile parsers (`sandbar_tests::fuzzing`), so `cargo test` covers them without
//! cargo-fuzz: the committed seeds and regressions of `fuzz/`, then mutations of them from a fixed seed.

const PIECES: &[&[u8]] = &[
    b"\n",
    b"\\\n",
    b"\r\n",
    b"FROM ",
    b"from ",
    b" AS ",
    b" as ",
    b"COPY --from=",
    b"ADD ",
    b"RUN ",
    b"--mount=",
    b"ONBUILD ",
    b"ARG ",
    b"USER ",
    b"# syntax=",
    b"# escape=`",
    b"$",
    b"${X}",
    b"scratch",
    b"http://",
    b"git@",
    b"0",
    b"1",
    b"sha256:",
    b"@",
    b":",
    b"/",
    b"\xc3\xa9",
    b"\t",
    b" ",
];

#[test]
fn dockerfile_parsers_never_panic() {
    sandbar_testkit::fuzz::run("dockerfile", 0xd0c4_e5f1, PIECES, sandbar_tests::fuzzing::dockerfile);
}
