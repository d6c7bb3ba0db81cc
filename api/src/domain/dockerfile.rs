//! The rules a Dockerfile must follow before a runner builds it, checked on the parsed instructions (line
//! continuations joined, instructions case-insensitive, comments and blank lines skipped as Docker's classic
//! builder does):
//!
//! - every `FROM` names an earlier stage, `scratch`, or an image the organization may name
//!   ([`super::images::check`]); `COPY --from=` names an earlier stage (by name or index) or such an image;
//! - `ADD` of a URL (`http://`, `https://`, `git@`, `git://`) is refused: dockerd would fetch it from the host's
//!   network (cloud metadata, loopback services);
//! - `RUN` flags (`--mount`, `--network`, `--security`), parser directives (`# syntax=` would load a frontend image
//!   from a registry, `# escape=` would change how lines join) and build arguments in `FROM`, `COPY --from` and
//!   `ADD` (they would hide a name or a URL from these checks) are refused;
//! - `ONBUILD` triggers follow the same rules, as they run in a later build.
//!
//! What is allowed still runs under the runner's build limits (no network, memory, CPU, processes).

use crate::error::{ApiError, ApiResult};

/// An image the Dockerfile names, and the instruction that names it (for the error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub image: String,
    pub instruction: &'static str,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("Dockerfile refused: {}", message.into()))
}

/// The logical lines: continuations (`\` at the end) joined, comment and blank lines left out.
fn logical_lines(dockerfile: &str) -> ApiResult<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut seen_instruction = false;
    for raw in dockerfile.lines() {
        let line = raw.trim();
        if line.starts_with('#') {
            if !seen_instruction && current.is_none() && is_directive(line) {
                return Err(bad(format!("parser directives such as {line:?} are not supported; remove the line")));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        seen_instruction = true;
        let (body, continues) = match line.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        let joined = match current.take() {
            Some(mut c) => {
                c.push(' ');
                c.push_str(body);
                c
            }
            None => body.to_owned(),
        };
        if continues {
            current = Some(joined);
        } else {
            out.push(joined);
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    Ok(out)
}

fn is_directive(comment: &str) -> bool {
    let body = comment.trim_start_matches('#').trim_start();
    match body.split_once('=') {
        Some((key, _)) => {
            let key = key.trim().to_ascii_lowercase();
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphabetic())
        }
        None => false,
    }
}

/// Flags (`--x=y`, or `--x y` for `--from`) and the remaining arguments of an instruction.
fn flags_and_args(rest: &str) -> (Vec<(String, Option<String>)>, Vec<String>) {
    let mut flags = Vec::new();
    let mut words = rest.split_whitespace().peekable();
    while let Some(w) = words.next_if(|w| w.starts_with("--")) {
        match w.split_once('=') {
            Some((k, v)) => flags.push((k.to_ascii_lowercase(), Some(v.to_owned()))),
            None if w.eq_ignore_ascii_case("--from") => flags.push(("--from".into(), words.next().map(str::to_owned))),
            None => flags.push((w.to_ascii_lowercase(), None)),
        }
    }
    (flags, words.map(str::to_owned).collect())
}

/// Checks one instruction; `stages` are the names of the earlier stages (lowercase), `count` how many there are.
fn instruction(
    line: &str,
    stages: &mut Vec<String>,
    count: &mut usize,
    named: &mut Vec<Named>,
    in_onbuild: bool,
) -> ApiResult<()> {
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let keyword = word.to_ascii_uppercase();
    let (flags, args) = flags_and_args(rest);
    match keyword.as_str() {
        "FROM" => {
            if in_onbuild {
                return Err(bad("ONBUILD FROM is not allowed"));
            }
            if let Some((f, _)) = flags.iter().find(|(f, _)| f != "--platform") {
                return Err(bad(format!("FROM does not take {f}")));
            }
            let image = args.first().ok_or_else(|| bad(format!("FROM without an image: {line:?}")))?;
            if image.contains('$') {
                return Err(bad(format!("FROM with a build argument is not supported: {line:?}")));
            }
            let lower = image.to_ascii_lowercase();
            if lower != "scratch" && !stages.contains(&lower) {
                named.push(Named { image: image.clone(), instruction: "FROM" });
            }
            match (args.get(1), args.get(2)) {
                (Some(as_), Some(stage)) if as_.eq_ignore_ascii_case("AS") => {
                    stages.push(stage.to_ascii_lowercase());
                }
                (None, None) => {}
                _ => return Err(bad(format!("FROM takes an image and optionally AS <name>: {line:?}"))),
            }
            *count += 1;
        }
        "COPY" => {
            if let Some((_, from)) = flags.iter().find(|(f, _)| f == "--from") {
                let from = from.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| bad("COPY --from needs a value"))?;
                if from.contains('$') {
                    return Err(bad(format!("COPY --from with a build argument is not supported: {line:?}")));
                }
                let lower = from.to_ascii_lowercase();
                let earlier_index = !in_onbuild && from.parse::<usize>().is_ok_and(|i| i < *count);
                let earlier_name = !in_onbuild && stages.contains(&lower);
                if !(earlier_index || earlier_name) {
                    named.push(Named { image: from.to_owned(), instruction: "COPY --from" });
                }
            }
        }
        "ADD" => {
            if rest.contains('$') {
                return Err(bad(format!("ADD with a variable is not supported: {line:?}")));
            }
            let lower = rest.to_ascii_lowercase();
            if lower.contains("://") || lower.contains("git@") || args.iter().any(|a| a.ends_with(".git")) {
                return Err(bad(format!(
                    "ADD of a URL is not allowed (builds have no network): {line:?}; put the file into the image \
                     another way"
                )));
            }
        }
        "RUN" => {
            if let Some((f, _)) = flags.first() {
                return Err(bad(format!("RUN {f} is not supported: {line:?}")));
            }
        }
        "ONBUILD" => {
            if in_onbuild {
                return Err(bad("ONBUILD ONBUILD is not allowed"));
            }
            instruction(rest, stages, count, named, true)?;
        }
        _ => {}
    }
    Ok(())
}

/// Checks a Dockerfile's instructions (see the module doc) and returns the images it names (not stages, not
/// `scratch`), each of which the caller checks with [`super::images::check`].
pub fn check(dockerfile: &str) -> ApiResult<Vec<Named>> {
    let mut stages = Vec::new();
    let mut count = 0;
    let mut named = Vec::new();
    for line in logical_lines(dockerfile)? {
        if count == 0 {
            let first = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
            if first != "FROM" && first != "ARG" {
                return Err(bad(format!("the first instruction must be FROM, not {first}")));
            }
        }
        instruction(&line, &mut stages, &mut count, &mut named, false)?;
    }
    if count == 0 {
        return Err(bad("no FROM line: start it with FROM <image>"));
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(df: &str) -> Vec<String> {
        check(df).unwrap().into_iter().map(|n| n.image).collect()
    }

    fn refused(df: &str) -> String {
        check(df).unwrap_err().message
    }

    #[test]
    fn stages_images_and_continuations() {
        let df = "from --platform=linux/amd64 base:1 AS Build\nRUN x \\\n  # a comment\n  && y\nFROM build\n\
                  COPY --from=build /a /a\nCOPY --from=0 /b /b\nCOPY --from=other:2 /c /c\nfrom scratch\n";
        assert_eq!(images(df), ["base:1", "other:2"]);
        // A continued FROM is still a FROM.
        assert_eq!(images("FROM \\\n  secret-image:1\nRUN x\n"), ["secret-image:1"]);
        assert_eq!(images("ARG X=1\nFROM a\nonbuild copy --from=b /x /x\n"), ["a", "b"]);
        // A stage cannot be named before it exists.
        assert_eq!(images("FROM a\nCOPY --from=later /x /x\nFROM b AS later\n"), ["a", "later", "b"]);
        assert_eq!(images("FROM a\nCOPY --from=1 /x /x\n"), ["a", "1"]);
    }

    #[test]
    fn refusals() {
        assert!(refused("FROM a\nADD http://169.254.169.254/latest/meta-data /m\n").contains("URL"));
        assert!(refused("FROM a\nadd \\\n  HTTPS://example.com/x /x\n").contains("URL"));
        assert!(refused("FROM a\nADD git@github.com:a/b.git /b\n").contains("URL"));
        assert!(refused("FROM a\nADD [\"http://x/y\", \"/y\"]\n").contains("URL"));
        assert!(refused("FROM a\nARG U=http://x\nADD $U /y\n").contains("variable"));
        assert!(refused("FROM a\nONBUILD ADD http://x /y\n").contains("URL"));
        assert!(refused("# syntax=docker/dockerfile:1\nFROM a\n").contains("directive"));
        assert!(refused("#escape=`\nFROM a\n").contains("directive"));
        assert!(refused("FROM $BASE\n").contains("build argument"));
        assert!(refused("FROM a\nCOPY --from=${X} /a /a\n").contains("build argument"));
        assert!(refused("FROM a\nRUN --mount=type=bind,from=b,target=/b ls\n").contains("--mount"));
        assert!(refused("FROM a\nRUN --network=host curl x\n").contains("--network"));
        assert!(refused("RUN x\n").contains("first instruction"));
        assert!(refused("# only a comment\n").contains("no FROM"));
        // A comment after the first instruction is only a comment.
        assert_eq!(images("FROM a\n# syntax=x\nRUN y\n"), ["a"]);
    }
}
