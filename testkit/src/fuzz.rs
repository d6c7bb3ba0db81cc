//! Seeded, deterministic fuzz loops for `cargo test`: a target's committed inputs from the cargo-fuzz crate
//! (`fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`, the inputs that once crashed), replayed, then
//! mutated from a fixed seed. The same sequence on every machine, so a failure reproduces; `SANDBAR_FUZZ_ITERS`
//! runs more (default 20 000 inputs per target). `scripts/fuzz` does the coverage-guided search on the same targets.

use std::path::{Path, PathBuf};

/// splitmix64: small, fast, and the same sequence everywhere.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// The repository's cargo-fuzz crate.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// `fuzz/seeds/<target>/*` (at least one must exist) and `fuzz/regressions/<target>/*`.
pub fn committed_inputs(target: &str) -> Vec<Vec<u8>> {
    let mut inputs = files(&fuzz_dir().join("seeds").join(target));
    assert!(!inputs.is_empty(), "no seeds in fuzz/seeds/{target}");
    inputs.extend(files(&fuzz_dir().join("regressions").join(target)));
    inputs
}

/// One mutant of a random seed: fragments of `pieces` spliced in, bits flipped, bytes inserted or cut, the tail
/// of another seed spliced in.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], pieces: &[&[u8]]) -> Vec<u8> {
    let mut v = seeds.get(rng.below(seeds.len())).cloned().unwrap_or_default();
    for _ in 0..=rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 => {
                let piece = pieces.get(rng.below(pieces.len())).copied().unwrap_or_default();
                v.splice(at..at, piece.iter().copied());
            }
            1 if at < v.len() => v[at] ^= 1 << rng.below(8),
            2 => v.insert(at, rng.next_u64() as u8),
            3 if at < v.len() => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            4 => v.truncate(at),
            _ => {
                let other = seeds.get(rng.below(seeds.len())).cloned().unwrap_or_default();
                let from = rng.below(other.len() + 1);
                v.splice(at..at, other[from..].iter().copied());
            }
        }
    }
    v
}

/// Replays `target`'s committed inputs, then feeds it mutants of them (and of the empty input); fails naming the
/// first input that panics.
pub fn run(name: &str, seed: u64, pieces: &[&[u8]], target: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut seeds = committed_inputs(name);
    for input in &seeds {
        let run = std::panic::catch_unwind(|| target(input));
        assert!(run.is_ok(), "{name} panicked on committed input {:?}", String::from_utf8_lossy(input));
    }
    seeds.push(Vec::new());
    let iters: usize = std::env::var("SANDBAR_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut rng = Rng(seed);
    for _ in 0..iters {
        let input = mutate(&mut rng, &seeds, pieces);
        let run = std::panic::catch_unwind(|| target(&input));
        assert!(run.is_ok(), "{name} panicked on {input:?} ({:?})", String::from_utf8_lossy(&input));
    }
}
