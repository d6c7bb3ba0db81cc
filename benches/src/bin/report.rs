//! `benches/run`'s last step: reads the samples it wrote (JSON lines, see `sandbar_benches::report`), prints the
//! Markdown table, writes it as JSON and draws the SVG.
//! Usage: report SAMPLES.jsonl OUT_DIR [KEY=VALUE...]   (the pairs describe the run: machine, commit, mode)

use std::collections::BTreeMap;

use anyhow::Context as _;
use sandbar_benches::report;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let samples = args.next().context("usage: report SAMPLES.jsonl OUT_DIR [KEY=VALUE...]")?;
    let out = std::path::PathBuf::from(args.next().context("OUT_DIR is required")?);
    let meta: BTreeMap<String, String> =
        args.filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
    let text = std::fs::read_to_string(&samples).with_context(|| format!("reading {samples}"))?;
    let s = report::Samples::parse(&text)?;
    let rows = report::table(&report::rows(), &s);
    let md = report::markdown(&rows);
    print!("{md}");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("table.md"), &md)?;
    std::fs::write(out.join("table.json"), serde_json::to_string_pretty(&report::to_json(&rows, &meta))?)?;
    // The figure is for people: a plotting failure is reported, never the run's failure.
    let title = meta.get("title").cloned().unwrap_or_else(|| "sandbar benches".into());
    match report::plot(&s, &out.join("proxy.svg"), &title) {
        Ok(()) => eprintln!("wrote {}", out.join("proxy.svg").display()),
        Err(e) => eprintln!("report: no figure ({e})"),
    }
    eprintln!("wrote {} and {}", out.join("table.md").display(), out.join("table.json").display());
    Ok(())
}
