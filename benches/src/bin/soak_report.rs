//! `scripts/soak`'s last step: reads the samples it took (JSON lines, see `sandbar_benches::soak`), prints the
//! summary, writes it as `soak.md` and draws `soak.svg`.
//! Usage: soak_report SAMPLES.jsonl OUT_DIR WARMUP_MINUTES [TITLE]

use anyhow::Context as _;
use sandbar_benches::{report, soak};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: soak_report SAMPLES.jsonl OUT_DIR WARMUP_MINUTES [TITLE]";
    let samples = args.next().context(usage)?;
    let out = std::path::PathBuf::from(args.next().context(usage)?);
    let warmup: f64 = args.next().context(usage)?.parse().context("WARMUP_MINUTES must be a number")?;
    let title = args.next().unwrap_or_else(|| "sandbar soak".into());
    let text = std::fs::read_to_string(&samples).with_context(|| format!("reading {samples}"))?;
    let s = report::Samples::parse(&text)?;
    let md = soak::markdown(&soak::trends(&s, warmup));
    print!("{md}");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("soak.md"), &md)?;
    // The figure is for people: a plotting failure is reported, never the run's failure.
    match soak::plot(&s, &out.join("soak.svg"), &title) {
        Ok(()) => eprintln!("wrote {}", out.join("soak.svg").display()),
        Err(e) => eprintln!("soak_report: no figure ({e})"),
    }
    Ok(())
}
