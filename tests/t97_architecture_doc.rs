//! docs/ARCHITECTURE.md stays true: every `path::name` it cites names a file that exists and a
//! function, type or trait defined in it.
use std::path::Path;

#[test]
fn every_name_the_architecture_map_cites_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("the map");
    let mut cited = 0;
    let mut missing = Vec::new();
    for (i, _) in doc.match_indices("::") {
        // `<path>.rs::<name>` or `<path>.py::<name>`, with the path starting at src/, python/
        // or tests/.
        let before = &doc[..i];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "/_.-".contains(c)))
            .map_or(0, |p| p + 1);
        let path = &before[start..];
        if !(path.ends_with(".rs") || path.ends_with(".py"))
            || !["src/", "python/", "tests/"]
                .iter()
                .any(|p| path.starts_with(p))
        {
            continue;
        }
        let name: String = doc[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        cited += 1;
        let Ok(text) = std::fs::read_to_string(root.join(path)) else {
            missing.push(format!("{path} (no such file)"));
            continue;
        };
        let defined = ["fn", "struct", "enum", "trait", "type", "def", "class"]
            .iter()
            .any(|kw| {
                text.contains(&format!("{kw} {name}("))
                    || text.contains(&format!("{kw} {name}<"))
                    || text.contains(&format!("{kw} {name} "))
                    || text.contains(&format!("{kw} {name};"))
                    || text.contains(&format!("{kw} {name}:"))
            });
        if !defined {
            missing.push(format!("{path}::{name}"));
        }
    }
    assert!(
        cited >= 30,
        "only {cited} citations found: is the notation still path::name?"
    );
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md cites what is not there: {missing:?}"
    );
}
