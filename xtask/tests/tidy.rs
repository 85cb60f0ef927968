//! Tidy tests, in the manner of rust-analyzer's: invariants of the workspace's shape that a
//! reviewer would otherwise have to remember, checked over the manifests, the sources and
//! `README.md` (its Architecture section). Nothing is compiled and no database is needed: the
//! tests only read files. Each failure says what to change.
//!
//! - the crate graph is exactly the one the README draws under its code map, and
//!   dev-dependencies name no workspace crate but the test crates (`cal-test-support`,
//!   `cal-test-infra`); xtask depends on no crate of `crates/` but `cal-test-infra`, which
//!   depends on nothing;
//! - `cal-domain` depends on no async runtime, database or network crate;
//! - sqlx appears only in `cal-storage` and `cal-test-support` (manifests and sources);
//! - every module a `lib.rs` (or a binary's `main.rs` with a tour) declares is named in its
//!   leading `//!` tour;
//! - the README's code map has a line for every crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The crates allowed to depend on sqlx and to name it in their sources.
const SQLX_CRATES: [&str; 2] = ["cal-storage", "cal-test-support"];

/// What `cal-domain` must not depend on: async runtimes, database, cache and network clients and
/// servers. A crate of one of these families (`tokio-util`, `sqlx-core`, `hyper-util`, …)
/// counts as that crate.
const NOT_IN_DOMAIN: [&str; 12] = [
    "tokio",
    "async-std",
    "smol",
    "futures",
    "sqlx",
    "redis",
    "rdkafka",
    "reqwest",
    "hyper",
    "axum",
    "tonic",
    "moka",
];

/// The only workspace crates a `[dev-dependencies]` section may name: the test fixtures
/// (`cal-test-support`, with the app harness) and the infrastructure they build on
/// (`cal-test-infra`, the standard library only). No other crate lists them in
/// `[dependencies]`.
const TEST_CRATES: [&str; 2] = ["cal-test-infra", "cal-test-support"];

/// The only crate of `crates/` xtask may depend on: it has no dependencies of its own, so xtask
/// still builds without compiling the service.
const XTASK_MAY_USE: &str = "cal-test-infra";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A path relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    let root = root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// One workspace crate: its folder, its package name and its parsed manifest.
struct Crate {
    dir: PathBuf,
    name: String,
    manifest: toml::Table,
}

fn load(dir: PathBuf) -> Crate {
    let path = dir.join("Cargo.toml");
    let manifest: toml::Table = read(&path)
        .parse()
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", rel(&path)));
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_else(|| panic!("{} has no package.name", rel(&path)))
        .to_owned();
    Crate {
        dir,
        name,
        manifest,
    }
}

/// The folders under `crates/`, sorted.
fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .expect("crates/ is readable")
        .map(|e| e.expect("a readable entry of crates/").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every crate of `crates/`.
fn crates() -> Vec<Crate> {
    crate_dirs().into_iter().map(load).collect()
}

fn xtask() -> Crate {
    load(root().join("xtask"))
}

/// The package names in `section` (`dependencies`, `dev-dependencies`, `build-dependencies`) of
/// a manifest, including the same section under every `[target.…]` table. A renamed dependency
/// (`package = "…"`) counts under its package's name.
fn deps(manifest: &toml::Table, section: &str) -> BTreeSet<String> {
    let mut tables: Vec<&toml::Table> = Vec::new();
    if let Some(t) = manifest.get(section).and_then(|v| v.as_table()) {
        tables.push(t);
    }
    if let Some(targets) = manifest.get("target").and_then(|v| v.as_table()) {
        for target in targets.values() {
            if let Some(t) = target.get(section).and_then(|v| v.as_table()) {
                tables.push(t);
            }
        }
    }
    let mut names = BTreeSet::new();
    for table in tables {
        for (key, value) in table.iter() {
            let package = value
                .get("package")
                .and_then(|p| p.as_str())
                .unwrap_or(key.as_str());
            names.insert(package.to_owned());
        }
    }
    names
}

/// Every dependency of a manifest, whatever its section.
fn all_deps(manifest: &toml::Table) -> BTreeSet<String> {
    let mut names = deps(manifest, "dependencies");
    for section in [
        "dev-dependencies",
        "dev_dependencies",
        "build-dependencies",
        "build_dependencies",
    ] {
        names.extend(deps(manifest, section));
    }
    names
}

/// The workspace crates among `names`.
fn workspace_crates(names: &BTreeSet<String>) -> BTreeSet<String> {
    names
        .iter()
        .filter(|n| n.starts_with("cal-"))
        .cloned()
        .collect()
}

/// The lines of the README's `### Code map` section (up to the next heading).
fn code_map_section(readme: &str) -> Vec<&str> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != "### Code map");
    assert!(
        lines.next().is_some(),
        "README.md has no `### Code map` section: the tidy tests read the code map and the crate \
         graph from it; restore the heading or update xtask/tests/tidy.rs"
    );
    lines
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect()
}

/// The crate graph the README draws: lines `- cal-x → cal-y, cal-z` (or `→ nothing`) in the
/// code map section.
fn drawn_graph(readme: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for line in code_map_section(readme) {
        let Some(item) = line.trim().strip_prefix("- ") else {
            continue;
        };
        let Some((from, to)) = item.split_once('→') else {
            continue;
        };
        let from = from.trim();
        if !from.starts_with("cal-") || from.contains(char::is_whitespace) {
            continue;
        }
        let to = to.trim();
        let targets: BTreeSet<String> = if to == "nothing" {
            BTreeSet::new()
        } else {
            to.split(',').map(|t| t.trim().to_owned()).collect()
        };
        let again = graph.insert(from.to_owned(), targets);
        assert!(
            again.is_none(),
            "README.md draws the dependencies of {from} twice under the code map: keep one line"
        );
    }
    graph
}

#[test]
fn crate_graph_is_the_one_the_readme_draws() {
    let readme = read(&root().join("README.md"));
    let drawn = drawn_graph(&readme);
    assert!(
        !drawn.is_empty(),
        "README.md's code map section draws no dependency lines: list every crate of crates/ as \
         `- cal-x → cal-y, cal-z` (or `- cal-x → nothing`) there"
    );
    let mut problems = Vec::new();
    let crates = crates();
    for krate in &crates {
        let actual = workspace_crates(&deps(&krate.manifest, "dependencies"));
        let Some(drawn_deps) = drawn.get(&krate.name) else {
            let list: Vec<&str> = actual.iter().map(String::as_str).collect();
            problems.push(format!(
                "{} has no line in the README's graph: add `- {} → {}` under the code map",
                krate.name,
                krate.name,
                if list.is_empty() {
                    "nothing".to_owned()
                } else {
                    list.join(", ")
                }
            ));
            continue;
        };
        for missing in actual.difference(drawn_deps) {
            problems.push(format!(
                "missing arrow {} → {missing}: {}/Cargo.toml lists it in [dependencies] but the \
                 README does not draw it; add it to the README's line for {} (or drop the \
                 dependency)",
                krate.name,
                rel(&krate.dir),
                krate.name
            ));
        }
        for extra in drawn_deps.difference(&actual) {
            problems.push(format!(
                "extra arrow {} → {extra}: the README draws it but {}/Cargo.toml's \
                 [dependencies] do not list it; remove it from the README's line for {}",
                krate.name,
                rel(&krate.dir),
                krate.name
            ));
        }
    }
    let names: BTreeSet<&str> = crates.iter().map(|c| c.name.as_str()).collect();
    for from in drawn.keys() {
        if !names.contains(from.as_str()) {
            problems.push(format!(
                "the README's graph has a line for {from}, which is no crate of crates/: remove it"
            ));
        }
    }
    let tool = xtask();
    for dep in workspace_crates(&all_deps(&tool.manifest)) {
        if dep != XTASK_MAY_USE {
            problems.push(format!(
                "xtask/Cargo.toml depends on {dep}, but the README says xtask depends on no crate \
                 of crates/ but {XTASK_MAY_USE}: drop the dependency (or change the README and \
                 this test)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the crate graph differs from README.md's (Architecture → Code map):\n{}",
        problems.join("\n")
    );
}

#[test]
fn only_the_test_crates_are_dev_dependencies() {
    let allowed = TEST_CRATES.join(" and ");
    let mut problems = Vec::new();
    for krate in crates() {
        for dep in workspace_crates(&deps(&krate.manifest, "dev-dependencies")) {
            if !TEST_CRATES.contains(&dep.as_str()) {
                problems.push(format!(
                    "{}/Cargo.toml has {dep} in [dev-dependencies]: the only workspace crates a \
                     test may depend on are {allowed}; reach {dep} through them, or make it a \
                     normal dependency and draw the arrow in the README",
                    rel(&krate.dir)
                ));
            }
        }
        // The test crates build on each other (cal-test-support re-exports cal-test-infra).
        if TEST_CRATES.contains(&krate.name.as_str()) {
            continue;
        }
        for dep in deps(&krate.manifest, "dependencies") {
            if TEST_CRATES.contains(&dep.as_str()) {
                problems.push(format!(
                    "{}/Cargo.toml has {dep} in [dependencies]: fixtures must never reach \
                     the service; move it to [dev-dependencies]",
                    rel(&krate.dir)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn cal_test_infra_depends_on_nothing() {
    let infra = load(root().join("crates/cal-test-infra"));
    let mut found = deps(&infra.manifest, "dependencies");
    found.extend(deps(&infra.manifest, "build-dependencies"));
    assert!(
        found.is_empty(),
        "crates/cal-test-infra/Cargo.toml depends on {}: it is the standard library only, so that \
         xtask (which uses it) and the Kafka adapter's tests build without them; put what needs \
         a dependency in cal-test-support",
        found.into_iter().collect::<Vec<_>>().join(", ")
    );
}

/// Whether `dep` is `family` or one of its crates (`tokio-util`, `sqlx_core`).
fn in_family(dep: &str, family: &str) -> bool {
    dep == family
        || dep
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
}

#[test]
fn cal_domain_depends_on_no_runtime_database_or_network_crate() {
    let domain = load(root().join("crates/cal-domain"));
    let forbidden: Vec<String> = deps(&domain.manifest, "dependencies")
        .into_iter()
        .filter(|dep| NOT_IN_DOMAIN.iter().any(|f| in_family(dep, f)))
        .collect();
    assert!(
        forbidden.is_empty(),
        "crates/cal-domain/Cargo.toml depends on {}: cal-domain does no I/O (plain values and \
         pure policy); move the code that needs it to cal-storage, cal-cache, cal-sync or cal-api",
        forbidden.join(", ")
    );
}

/// The `.rs` files under `dir`, skipping build output and npm packages.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            let skip = path
                .file_name()
                .is_some_and(|n| n == "target" || n == "node_modules");
            if !skip {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sqlx_appears_only_in_storage_and_test_support() {
    let mut problems = Vec::new();
    let this_file = root().join("xtask/tests/tidy.rs");
    let mut others: Vec<Crate> = crates()
        .into_iter()
        .filter(|c| !SQLX_CRATES.contains(&c.name.as_str()))
        .collect();
    others.push(xtask());
    for krate in &others {
        for dep in all_deps(&krate.manifest) {
            if in_family(&dep, "sqlx") {
                problems.push(format!(
                    "{}/Cargo.toml depends on {dep}: only {} may; use what cal-storage exports \
                     (e.g. cal_storage::PgPool, cal_storage::connect) or, in tests, \
                     cal_test_support::sql, then drop the dependency",
                    rel(&krate.dir),
                    SQLX_CRATES.join(" and ")
                ));
            }
        }
        let mut files = Vec::new();
        rust_files(&krate.dir, &mut files);
        files.sort();
        for file in files.iter().filter(|f| **f != this_file) {
            for (i, line) in read(file).lines().enumerate() {
                if line.contains("sqlx::") || line.contains("use sqlx") {
                    problems.push(format!(
                        "{}:{}: names sqlx outside {}: move the statement into cal-storage \
                         (service code) or cal_test_support::sql (tests), or use a re-export \
                         such as cal_storage::PgPool\n    {}",
                        rel(file),
                        i + 1,
                        SQLX_CRATES.join(" and "),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The text of a file's leading `//!` block (without the `//!` markers).
fn leading_doc(source: &str) -> String {
    source
        .lines()
        .map_while(|l| l.trim_start().strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module `line` declares with `mod NAME;`, `pub mod NAME;` or `pub(…) mod NAME;`.
fn declared_module(line: &str) -> Option<&str> {
    let mut rest = line.trim();
    if let Some(after) = rest.strip_prefix("pub") {
        rest = after.trim_start();
        if let Some(after) = rest.strip_prefix('(') {
            rest = after.split_once(')')?.1.trim_start();
        }
    }
    let name = rest.strip_prefix("mod ")?.trim().strip_suffix(';')?.trim();
    let plain = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    plain.then_some(name)
}

#[test]
fn every_module_is_named_in_its_crate_tour() {
    let mut problems = Vec::new();
    let mut dirs = crate_dirs();
    dirs.push(root().join("xtask"));
    for dir in dirs {
        for (file, tour_required) in [("src/lib.rs", true), ("src/main.rs", false)] {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            let source = read(&path);
            let doc = leading_doc(&source);
            let words: BTreeSet<&str> = doc
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            let modules: Vec<&str> = source.lines().filter_map(declared_module).collect();
            if doc.trim().is_empty() {
                if tour_required && !modules.is_empty() {
                    problems.push(format!(
                        "{} has no leading //! doc block: start it with a tour naming every \
                         module it declares ({})",
                        rel(&path),
                        modules.join(", ")
                    ));
                }
                continue;
            }
            for module in modules {
                if !words.contains(module) {
                    problems.push(format!(
                        "{}: `mod {module};` is not named in the file's leading //! tour: add a \
                         line such as \"- `{module}`: what it holds\"",
                        rel(&path)
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn code_map_names_every_crate() {
    let readme = read(&root().join("README.md"));
    let section = code_map_section(&readme);
    let block: Vec<&str> = section
        .iter()
        .copied()
        .skip_while(|l| !l.trim_start().starts_with("```"))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("```"))
        .collect();
    let entries: BTreeSet<&str> = block
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .map(|first| first.trim_end_matches('/'))
        .collect();
    let mut problems = Vec::new();
    let mut expected: Vec<String> = crate_dirs()
        .iter()
        .map(|d| format!("crates/{}", d.file_name().unwrap().to_string_lossy()))
        .collect();
    expected.push("xtask".to_owned());
    for name in &expected {
        if !entries.contains(name.as_str()) {
            problems.push(format!(
                "the README's code map has no line for {name}: add `{name}  what it holds` to \
                 the fenced block under ### Code map"
            ));
        }
    }
    for entry in &entries {
        if entry.starts_with("crates/") && !expected.iter().any(|e| e == entry) {
            problems.push(format!(
                "the README's code map has a line for {entry}, which is no folder of crates/: \
                 remove or rename it"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
