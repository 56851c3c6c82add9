//! The docs cannot rot silently: every relative link and anchor in README.md, the
//! crates' READMEs and docs/ resolves; every `outbox-relay` subcommand and flag they
//! name exists, as the binary's own `--help` lists them; every `cargo -p` names a
//! package of the workspace, and every `-p examples --bin` one of its binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

type TestResult = anyhow::Result<()>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// README.md, each crate's README, and everything under docs/.
fn markdown_files() -> anyhow::Result<Vec<PathBuf>> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for krate in ["outbox", "relay", "idempotency", "saga"] {
        files.push(root.join(krate).join("README.md"));
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A Markdown file's prose and its code, told apart: fenced blocks are code, and so
/// are inline spans; links are looked for only in prose.
struct Parsed {
    /// Lines outside fenced blocks, with inline code removed.
    prose: Vec<String>,
    /// Each fenced block's lines, and each inline code span.
    code: Vec<String>,
    headings: Vec<String>,
}

fn parse(text: &str) -> Parsed {
    let (mut prose, mut code, mut headings) = (Vec::new(), Vec::new(), Vec::new());
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            code.push(line.to_owned());
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            headings.push(heading.trim_start_matches('#').trim().to_owned());
        }
        let mut outside = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 1 {
                code.push(part.to_owned());
            } else {
                outside.push_str(part);
            }
        }
        prose.push(outside);
    }
    Parsed {
        prose,
        code,
        headings,
    }
}

/// GitHub's anchor for a heading: lowercased, punctuation other than `-` and `_`
/// dropped, spaces turned into `-`; a repeated heading gets `-1`, `-2`, ...
fn anchors(headings: &[String]) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for heading in headings {
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(match *count {
            0 => slug,
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// The targets of `[text](target)` links in a prose line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        targets.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    targets
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() -> TestResult {
    let files = markdown_files()?;
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let parsed = parse(&std::fs::read_to_string(file)?);
        for target in parsed.prose.iter().flat_map(|line| link_targets(line)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().expect("a file's folder").join(path))
            };
            let shown = file.strip_prefix(root()).unwrap_or(file).display();
            if !resolved.exists() {
                problems.push(format!("{shown}: {target}: no such file"));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(&resolved).unwrap_or_default();
            if !anchors(&parse(&text).headings).contains(anchor) {
                problems.push(format!("{shown}: {target}: no heading with that anchor"));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the parser blind?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// A command of `outbox-relay` as its `--help` describes it.
#[derive(Default)]
struct Cli {
    /// Long flags, and whether each takes a value.
    flags: BTreeMap<String, bool>,
    subcommands: BTreeMap<String, Cli>,
    /// Whether it takes positional arguments.
    positional: bool,
}

fn help(path: &[&str]) -> anyhow::Result<Cli> {
    let output = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(path)
        .arg("--help")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "outbox-relay {path:?} --help failed"
    );
    let text = String::from_utf8(output.stdout)?;
    let mut cli = Cli::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let trimmed = line.trim_start();
        match section {
            "Commands:" => {
                let name = trimmed.split_whitespace().next().unwrap_or_default();
                if !name.is_empty()
                    && name != "help"
                    && line.starts_with("  ")
                    && !line.starts_with("   ")
                {
                    let mut sub = path.to_vec();
                    sub.push(name);
                    cli.subcommands.insert(name.to_owned(), help(&sub)?);
                }
            }
            "Options:" | "Arguments:" => {
                for word in trimmed.split(|c: char| c == ',' || c.is_whitespace()) {
                    if let Some(flag) = word.strip_prefix("--") {
                        let takes_value = trimmed.contains(&format!("--{flag} <"));
                        cli.flags.insert(flag.to_owned(), takes_value);
                    }
                }
                if section == "Arguments:" && trimmed.starts_with(['<', '[']) {
                    cli.positional = true;
                }
            }
            _ => {}
        }
    }
    Ok(cli)
}

impl Cli {
    fn all_flags(&self, into: &mut BTreeSet<String>) {
        into.extend(self.flags.keys().cloned());
        for sub in self.subcommands.values() {
            sub.all_flags(into);
        }
    }

    /// Checks the words after `outbox-relay` on one command line; the reason if wrong.
    fn check(&self, words: &[&str]) -> Option<String> {
        let mut command = self;
        let mut path = vec!["outbox-relay".to_owned()];
        let mut words = words.iter();
        while let Some(word) = words.next() {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap_or_default();
                match command.flags.get(flag) {
                    Some(true) if !word.contains('=') => {
                        words.next();
                    }
                    Some(_) => {}
                    None => return Some(format!("`{}` has no flag --{flag}", path.join(" "))),
                }
            } else if let Some(sub) = command.subcommands.get(*word) {
                command = sub;
                path.push((*word).to_owned());
            } else if !command.positional {
                return Some(format!("`{}` has no subcommand {word}", path.join(" ")));
            }
        }
        None
    }
}

/// The words of each `outbox-relay ...` invocation in a piece of code, up to the
/// end of the shell command.
fn invocations(code: &str) -> Vec<Vec<&str>> {
    let mut found = Vec::new();
    let words: Vec<&str> = code.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        // A TOML key (`outbox-relay = { .. }`) names the package, not a call.
        if *word != "outbox-relay" || words.get(i + 1) == Some(&"=") {
            continue;
        }
        let args: Vec<&str> = words[i + 1..]
            .iter()
            .take_while(|w| !matches!(**w, "|" | ";" | "&&" | "||" | "#" | "\\" | "or" | "/"))
            .take_while(|w| !w.starts_with('#') && !w.starts_with('('))
            .map(|w| w.trim_end_matches([',', '.', ';', ')']))
            .filter(|w| !w.is_empty())
            .collect();
        found.push(args);
    }
    found
}

/// Where a bare `--flag` in inline code is another program's: the demo's flags and
/// the benchmarks' own.
const OTHER_PROGRAMS: [&str; 2] = ["docs/benchmarks.md", "docs/guide/demo.md"];

#[test]
fn every_outbox_relay_command_and_flag_named_exists() -> TestResult {
    let cli = help(&[])?;
    assert!(cli.subcommands.contains_key("saga") && cli.flags.contains_key("batch-size"));
    let mut every_flag = BTreeSet::new();
    cli.all_flags(&mut every_flag);
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files()? {
        let shown = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        let parsed = parse(&std::fs::read_to_string(&file)?);
        for code in &parsed.code {
            for words in invocations(code) {
                checked += 1;
                if let Some(problem) = cli.check(&words) {
                    problems.push(format!("{shown}: {problem} (in `{}`)", code.trim()));
                }
            }
            let bare = code.trim();
            if bare.starts_with("--") && !OTHER_PROGRAMS.contains(&shown.as_str()) {
                for word in bare.split([' ', '/', '=']).filter(|w| w.starts_with("--")) {
                    checked += 1;
                    if !every_flag.contains(&word[2..]) {
                        problems.push(format!(
                            "{shown}: outbox-relay has no flag {word:?} (in {bare:?})"
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} commands and flags found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn every_cargo_package_named_exists() -> TestResult {
    let root = root();
    let mut packages = BTreeSet::new();
    for member in [
        "outbox",
        "relay",
        "idempotency",
        "saga",
        "examples",
        "bench",
        "testkit",
    ] {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml"))?;
        let name = manifest
            .lines()
            .find_map(|line| line.strip_prefix("name = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .ok_or_else(|| anyhow::anyhow!("{member}: no package name"))?;
        packages.insert(name.to_owned());
    }
    let examples = example_binaries()?;
    let (mut problems, mut checked_packages, mut checked_binaries) = (Vec::new(), 0, 0);
    for file in markdown_files()? {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for code in parse(&std::fs::read_to_string(&file)?).code {
            let words: Vec<&str> = code.split_whitespace().collect();
            for (i, pair) in words.windows(2).enumerate() {
                if pair[0] != "-p" {
                    continue;
                }
                checked_packages += 1;
                let package = pair[1].trim_end_matches([',', ')']);
                if !packages.contains(package) {
                    problems.push(format!(
                        "{shown}: no package {package} (in `{}`)",
                        code.trim()
                    ));
                }
                if package != "examples" {
                    continue;
                }
                let Some(binary) = binary_named(&words[i + 2..]) else {
                    continue;
                };
                checked_binaries += 1;
                if !examples.contains(binary) {
                    problems.push(format!(
                        "{shown}: examples has no binary {binary} (in `{}`)",
                        code.trim()
                    ));
                }
            }
        }
    }
    assert!(
        checked_packages > 15,
        "only {checked_packages} `-p` packages found"
    );
    assert!(
        checked_binaries >= 4,
        "only {checked_binaries} `-p examples --bin` binaries found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The binaries of the examples package, as Cargo finds them (it names none in its
/// manifest): each `examples/src/bin/NAME.rs`, and each `examples/src/bin/NAME/main.rs`.
fn example_binaries() -> anyhow::Result<BTreeSet<String>> {
    let mut binaries = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("examples/src/bin"))? {
        let path = entry?.path();
        let binary = if path.is_dir() {
            path.join("main.rs").is_file().then(|| path.file_name())
        } else {
            path.extension()
                .is_some_and(|e| e == "rs")
                .then(|| path.file_stem())
        };
        if let Some(name) = binary.flatten().and_then(|n| n.to_str()) {
            binaries.insert(name.to_owned());
        }
    }
    Ok(binaries)
}

/// The binary a `--bin NAME` right after a `-p PACKAGE` names, if it has one.
fn binary_named<'a>(after_package: &[&'a str]) -> Option<&'a str> {
    match after_package {
        ["--bin", name, ..] => Some(name.trim_end_matches([',', ')', '`'])),
        _ => None,
    }
}

#[test]
fn anchors_follow_github() {
    let headings = [
        "A message is in a consumer's `{queue}.dead`".to_owned(),
        "Batches: one commit".to_owned(),
        "Batches: one commit".to_owned(),
    ];
    let anchors = anchors(&headings);
    for expected in [
        "a-message-is-in-a-consumers-queuedead",
        "batches-one-commit",
        "batches-one-commit-1",
    ] {
        assert!(anchors.contains(expected), "{expected} not in {anchors:?}");
    }
}

#[test]
fn the_deployment_examples_run_real_commands_and_probe_real_paths() -> TestResult {
    let cli = help(&[])?;
    let root = root();
    let mut files = vec![root.join("deploy/docker/Dockerfile")];
    for entry in std::fs::read_dir(root.join("deploy/kubernetes"))? {
        files.push(entry?.path());
    }
    let (mut problems, mut commands, mut probes) = (Vec::new(), 0, 0);
    for file in files {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for line in std::fs::read_to_string(&file)?.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let unquoted = line.replace(['[', ']', '"', ','], " ");
            for words in invocations(&unquoted) {
                commands += 1;
                if let Some(problem) = cli.check(&words) {
                    problems.push(format!("{shown}: {problem}"));
                }
                let addr = words.windows(2).find(|w| w[0] == "--http-addr");
                if addr.is_some_and(|w| !w[1].ends_with(":9187")) {
                    problems.push(format!("{shown}: the probes and scrape expect port 9187"));
                }
            }
            if line.contains("port: relay-metrics") {
                probes += 1;
                let path = line
                    .split("path: ")
                    .nth(1)
                    .and_then(|p| p.split([',', '}']).next());
                if !matches!(path, Some("/healthz" | "/readyz")) {
                    problems.push(format!("{shown}: the relay serves no probe at {path:?}"));
                }
            }
        }
    }
    assert!(
        commands >= 4 && probes >= 3,
        "{commands} commands, {probes} probes found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
