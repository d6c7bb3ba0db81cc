//! Parsers for git's machine-readable output: `status --porcelain=v2 --branch -z` and the NUL-separated `log`
//! format the history endpoint asks for. git's output is trusted no more than a request: nothing here panics.

use sandbar_proto::toolbox::{CommitInfo, FileStatus, GitStatus};

const UNMODIFIED: &str = "Unmodified";
const UNTRACKED: &str = "Untracked";
const UNMERGED: &str = "Updated but unmerged";

/// A changed entry: porcelain's `XY` in Daytona's words; `extra` is a rename's original path.
fn changed(code: &str, path: &str, extra: &str) -> FileStatus {
    let (staging, worktree) = xy(code);
    FileStatus { name: path.to_owned(), staging: staging.into(), worktree: worktree.into(), extra: extra.to_owned() }
}

/// Daytona's name for one letter of porcelain's `XY`.
fn state(c: char) -> &'static str {
    match c {
        'M' | 'T' => "Modified", // a type change (file <-> symlink) is a modification to the SDK
        'A' => "Added",
        'D' => "Deleted",
        'R' => "Renamed",
        'C' => "Copied",
        'U' => UNMERGED,
        '?' => UNTRACKED,
        _ => UNMODIFIED,
    }
}

fn xy(field: &str) -> (&'static str, &'static str) {
    let mut chars = field.chars();
    let x = chars.next().unwrap_or('.');
    let y = chars.next().unwrap_or('.');
    (state(x), state(y))
}

/// Parses `git status --porcelain=v2 --branch -z`. Records are NUL-terminated; a rename or copy record is
/// followed by one more NUL-terminated field, the original path. Paths may contain spaces, so each record is
/// split into exactly as many fields as its type has.
pub fn parse_status(out: &str) -> GitStatus {
    let mut st = GitStatus::default();
    let mut records = out.split('\0');
    while let Some(rec) = records.next() {
        if let Some(header) = rec.strip_prefix("# ") {
            let (key, value) = header.split_once(' ').unwrap_or((header, ""));
            match key {
                "branch.head" => {
                    if value == "(detached)" {
                        st.detached = true;
                        st.current_branch = "HEAD".into();
                    } else {
                        st.current_branch = value.to_owned();
                    }
                }
                "branch.upstream" => st.upstream = Some(value.to_owned()),
                "branch.ab" => {
                    // Only printed when the upstream exists.
                    st.branch_published = true;
                    for part in value.split(' ') {
                        if let Some(n) = part.strip_prefix('+') {
                            st.ahead = n.parse().unwrap_or(0);
                        } else if let Some(n) = part.strip_prefix('-') {
                            st.behind = n.parse().unwrap_or(0);
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let mut kind = rec.splitn(2, ' ');
        let entry = match (kind.next(), kind.next()) {
            (Some("1"), Some(rest)) => {
                // XY sub mH mI mW hH hI path
                let f: Vec<&str> = rest.splitn(8, ' ').collect();
                match (f.first(), f.get(7)) {
                    (Some(code), Some(path)) => Some(changed(code, path, "")),
                    _ => None,
                }
            }
            (Some("2"), Some(rest)) => {
                // XY sub mH mI mW hH hI Xscore path, then the original path as its own record
                let f: Vec<&str> = rest.splitn(9, ' ').collect();
                let orig = records.next().unwrap_or_default();
                match (f.first(), f.get(8)) {
                    (Some(code), Some(path)) => Some(changed(code, path, orig)),
                    _ => None,
                }
            }
            (Some("u"), Some(rest)) => {
                // XY sub m1 m2 m3 mW h1 h2 h3 path: a conflict, whatever the letters say.
                rest.splitn(10, ' ').nth(9).map(|path| FileStatus {
                    name: path.to_owned(),
                    staging: UNMERGED.into(),
                    worktree: UNMERGED.into(),
                    extra: String::new(),
                })
            }
            (Some("?"), Some(path)) => Some(FileStatus {
                name: path.to_owned(),
                staging: UNTRACKED.into(),
                worktree: UNTRACKED.into(),
                extra: String::new(),
            }),
            _ => None, // "! path" (ignored files, not asked for) and the empty tail after the last NUL
        };
        st.file_status.extend(entry);
    }
    st
}

/// The `git log` format [`parse_log`] reads: five NUL-terminated fields per commit (with `-z`, each commit is
/// then followed by one more NUL).
pub const LOG_FORMAT: &str = "--format=%H%x00%an%x00%ae%x00%aI%x00%B%x00";

pub fn parse_log(out: &str) -> Vec<CommitInfo> {
    let fields: Vec<&str> = out.split('\0').collect();
    fields
        .chunks(6)
        .filter_map(|c| match c {
            [hash, author, email, timestamp, message, ..] if !hash.is_empty() => Some(CommitInfo {
                hash: (*hash).to_owned(),
                author: (*author).to_owned(),
                email: (*email).to_owned(),
                message: message.trim_end().to_owned(),
                timestamp: (*timestamp).to_owned(),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_a_busy_worktree() {
        let out = [
            "# branch.oid 1111111111111111111111111111111111111111",
            "# branch.head feature/x",
            "# branch.upstream origin/feature/x",
            "# branch.ab +2 -3",
            "1 A. N... 000000 100644 100644 0000 aaaa new file.txt",
            "1 .M N... 100644 100644 100644 aaaa aaaa changed.rs",
            "1 MD N... 100644 100644 000000 aaaa aaaa both",
            "2 R. N... 100644 100644 100644 aaaa aaaa R100 new name",
            "old name",
            "u UU N... 100644 100644 100644 100644 a b c conflicted file",
            "? untracked dir/f",
            "",
        ]
        .join("\0");
        let st = parse_status(&out);
        assert_eq!(st.current_branch, "feature/x");
        assert_eq!(st.upstream.as_deref(), Some("origin/feature/x"));
        assert!(st.branch_published && !st.detached);
        assert_eq!((st.ahead, st.behind), (2, 3));
        let got: Vec<(&str, &str, &str, &str)> = st
            .file_status
            .iter()
            .map(|f| (f.name.as_str(), f.staging.as_str(), f.worktree.as_str(), f.extra.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("new file.txt", "Added", "Unmodified", ""),
                ("changed.rs", "Unmodified", "Modified", ""),
                ("both", "Modified", "Deleted", ""),
                ("new name", "Renamed", "Unmodified", "old name"),
                ("conflicted file", UNMERGED, UNMERGED, ""),
                ("untracked dir/f", "Untracked", "Untracked", ""),
            ]
        );
    }

    #[test]
    fn status_detached_unborn_and_garbage() {
        let st = parse_status("# branch.oid abc\0# branch.head (detached)\0");
        assert!(st.detached);
        assert_eq!(st.current_branch, "HEAD");
        assert!(!st.branch_published && st.upstream.is_none());

        let st = parse_status("# branch.oid (initial)\0# branch.head main\0");
        assert_eq!(st.current_branch, "main");
        assert!(st.file_status.is_empty());

        // Truncated or unknown records are skipped, never a panic.
        let st = parse_status(&["1 M", "2 R. x", "u UU", "# branch.ab +x -", "zzz", "# ", "#", ""].join("\0"));
        assert!(st.file_status.is_empty());
        assert_eq!((st.ahead, st.behind), (0, 0));
    }

    #[test]
    fn log_records() {
        let out = "aaaa\0Ann\0ann@x\x002024-01-02T03:04:05+01:00\0two\n\nbody\n\0\0\
                   bbbb\0Bob\0bob@x\x002024-01-01T00:00:00Z\0one\n\0\0";
        let log = parse_log(out);
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].hash, "aaaa");
        assert_eq!(log[0].message, "two\n\nbody");
        assert_eq!(log[0].timestamp, "2024-01-02T03:04:05+01:00");
        assert_eq!(log[1].author, "Bob");
        assert_eq!(log[1].email, "bob@x");
        assert!(parse_log("").is_empty());
        assert!(parse_log("x\0y").is_empty());
    }
}
