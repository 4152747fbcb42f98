//! The documentation renders as written: every table line of the README,
//! CONTRIBUTING and `docs/` is part of a table (a paragraph between two
//! rows would cut a table in two, and the rows after it would show as
//! text), and every link to a file or a heading of the repository leads
//! somewhere. Parsed with pulldown-cmark (CommonMark with GitHub's tables),
//! the way a renderer reads them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, CONTRIBUTING.md and every file of docs/, relative to the root.
fn documents() -> Vec<PathBuf> {
    let mut all = vec![PathBuf::from("README.md"), PathBuf::from("CONTRIBUTING.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| Path::new("docs").join(path.file_name().expect("a name")))
        .collect();
    docs.sort();
    all.extend(docs);
    all
}

fn read(doc: &Path) -> String {
    std::fs::read_to_string(root().join(doc)).expect("a readable document")
}

fn parser(text: &str) -> Parser<'_> {
    Parser::new_ext(text, Options::ENABLE_TABLES)
}

/// A heading's anchor as GitHub makes it: lower case, spaces to hyphens,
/// other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a document's headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut heading: Option<String> = None;
    for event in parser(text) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    found.insert(anchor(&h));
                }
            }
            _ => {}
        }
    }
    found
}

#[test]
fn every_table_line_renders_as_a_table_row() {
    for doc in documents() {
        let text = read(&doc);
        // Lines that look like table rows, outside fenced code.
        let mut fenced = false;
        let mut pipe_lines = 0;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            } else if !fenced && line.trim_start().starts_with('|') {
                pipe_lines += 1;
            }
        }
        // Rows the parser saw (the header and its delimiter line are one
        // head, so count it twice), and lines inside fenced code it saw.
        let mut rows = 0;
        let mut in_code = false;
        for event in parser(&text) {
            match event {
                Event::Start(Tag::TableHead) => rows += 2,
                Event::Start(Tag::TableRow) => rows += 1,
                Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(_))) => in_code = true,
                Event::End(TagEnd::CodeBlock) => in_code = false,
                _ => {}
            }
        }
        assert!(
            !in_code,
            "{}: a fenced code block is not closed",
            doc.display()
        );
        assert_eq!(
            rows,
            pipe_lines,
            "{}: {pipe_lines} table lines, but {rows} render as table rows: a table is cut \
             or malformed",
            doc.display()
        );
    }
}

#[test]
fn every_link_inside_the_repository_leads_somewhere() {
    let docs = documents();
    let by_path: HashMap<PathBuf, HashSet<String>> = docs
        .iter()
        .map(|doc| (doc.clone(), anchors(&read(doc))))
        .collect();
    let mut broken = Vec::new();
    for doc in &docs {
        let text = read(doc);
        for event in parser(&text) {
            let Event::Start(Tag::Link { dest_url, .. }) = event else {
                continue;
            };
            if dest_url.contains("://") || dest_url.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = dest_url.split_once('#').unwrap_or((&dest_url, ""));
            let target = if path.is_empty() {
                doc.clone()
            } else {
                normalize(&doc.parent().unwrap_or(Path::new("")).join(path))
            };
            if !root().join(&target).exists() {
                broken.push(format!("{}: {dest_url}: no such file", doc.display()));
                continue;
            }
            if fragment.is_empty() {
                continue;
            }
            match by_path.get(&target) {
                Some(anchors) if anchors.contains(fragment) => {}
                Some(_) => broken.push(format!("{}: {dest_url}: no such heading", doc.display())),
                None => broken.push(format!(
                    "{}: {dest_url}: a heading in a file that is not documentation",
                    doc.display()
                )),
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `docs/../README.md` as `README.md` (the paths here are relative).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_readme_is_short_and_keeps_its_two_commands() {
    let readme = read(Path::new("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: depth goes to docs/"
    );
    // The demo command and the test command, as CI and a new user run them.
    assert!(
        readme.contains(
            "cargo run --release -- --listen-address 127.0.0.1:9009 --libvirt-uri \
             \"test://$PWD/tests/data/demo-node.xml\""
        ),
        "the demo command"
    );
    assert!(
        readme.contains("```sh\ncargo test\n```"),
        "the test command"
    );
    // One top-level title per document.
    for doc in documents() {
        let titles = parser(&read(&doc))
            .filter(|e| {
                matches!(
                    e,
                    Event::Start(Tag::Heading {
                        level: HeadingLevel::H1,
                        ..
                    })
                )
            })
            .count();
        assert_eq!(titles, 1, "{}: {titles} top-level headings", doc.display());
    }
}
