//! Lints for `cordon policy check`: mistakes that parse and compile but make
//! a policy quietly wrong.
//!
//! - a contract rule (`allow`, `deny`, `errno`) in a package nothing refers
//!   to: the broker evaluates only `data.cordon`, so it is never used;
//! - `deny` written as a boolean or a single value instead of a set of reasons;
//! - an `errno` that names no errno, or `allow` and `errno` with a constant
//!   of the wrong type;
//! - data that no policy refers to (a typo in a key leaves a rule without
//!   the data it was meant to use).
//!
//! Unused data is found by reference text (`data.a.b`), so data used only
//! through a computed key (`data.a[k]`) counts as used for all of `data.a`.

use regorus::unstable::{Expr, Rule, RuleHead};

use crate::{
    errno,
    policy::{PolicyError, PolicySource, SourceSet, build_engine},
};

/// One finding, located where it can be fixed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lint {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
    /// The mistake makes every evaluation fail, so every call is denied:
    /// `cordon serve` refuses to start with it, and a reload to install it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub denies_every_call: bool,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

const CONTRACT_RULES: [&str; 3] = ["allow", "deny", "errno"];

/// Lints a policy source that already loads.
pub fn lint(source: &PolicySource) -> Result<Vec<Lint>, PolicyError> {
    let sources = SourceSet::read(source)?;
    let data = sources.data_document()?;
    let mut engine = build_engine(&sources, &sources.data_value()?, false)?;
    let all_text: String = sources.rego_texts().collect::<Vec<_>>().join("\n");
    let mut lints = Vec::new();
    let mut unreferenced = std::collections::BTreeSet::new();
    for module in engine.get_modules() {
        let package = crate::policy::package_name(module);
        let file = module.package.span.source.file().clone();
        for rule in &module.policy {
            let (span, head_name, is_set, assigned, unconditional) = match rule.as_ref() {
                Rule::Spec { span, head, bodies } => match head {
                    RuleHead::Compr { refr, assign, .. } => (
                        span,
                        refr.span().text().to_owned(),
                        false,
                        assign.as_ref().map(|a| a.value.clone()),
                        bodies.is_empty(),
                    ),
                    RuleHead::Set { refr, .. } => (
                        span,
                        refr.span().text().to_owned(),
                        true,
                        None,
                        bodies.is_empty(),
                    ),
                    RuleHead::Func { .. } => continue,
                },
                // A default's value has the rule's type to keep too (a
                // non-boolean `default allow` is a policy error wherever no
                // other rule holds), but it never holds alone: not every call.
                Rule::Default {
                    span, refr, value, ..
                } => (
                    span,
                    refr.span().text().to_owned(),
                    false,
                    Some(value.clone()),
                    false,
                ),
            };
            if !CONTRACT_RULES.contains(&head_name.as_str()) {
                continue;
            }
            let at = |message: String| Lint {
                file: file.clone(),
                line: span.line,
                col: span.col,
                message,
                denies_every_call: false,
            };
            if package != "cordon" && !refers_to(&all_text, &package) {
                // Once per rule name and package, at its first definition.
                if !unreferenced.insert((package.clone(), head_name.clone())) {
                    continue;
                }
                lints.push(at(format!(
                    "rule {head_name} is in package {} and nothing refers to it: the broker evaluates only package cordon",
                    package
                )));
                continue;
            }
            // A set written whole (`deny := {"why"} if …`) is one; anything
            // else is not, nor is a value only known when evaluated.
            let set_literal = matches!(assigned.as_deref(), Some(Expr::Set { .. }));
            if head_name == "deny" && !is_set && !set_literal {
                lints.push(at(
                    "deny must be a set of reasons: write `deny contains \"why\" if { … }`".into(),
                ));
            }
            let literal_kind = assigned.as_deref().and_then(|v| match v {
                Expr::String { .. } | Expr::RawString { .. } => Some("a string"),
                Expr::Number { .. } => Some("a number"),
                Expr::Bool { .. } => Some("a boolean"),
                Expr::Null { .. } => Some("null"),
                Expr::Array { .. } => Some("an array"),
                Expr::Set { .. } => Some("a set"),
                Expr::Object { .. } => Some("an object"),
                _ => None,
            });
            if head_name == "allow"
                && let Some(kind) = literal_kind.filter(|k| *k != "a boolean")
            {
                lints.push(Lint {
                    // Only the contract's own, and whatever the input: a
                    // library package's `allow` may be anything, and a
                    // conditional one fails only where it holds.
                    denies_every_call: package == "cordon" && unconditional,
                    ..at(format!(
                        "allow must be a boolean, not {kind}: every call would be denied (`policy error`)"
                    ))
                });
            }
            if head_name == "errno"
                && let Some(kind) = literal_kind.filter(|k| *k != "a string")
            {
                lints.push(at(format!(
                    "errno must be an errno name (a string such as \"EPERM\"), not {kind}: EACCES would be used"
                )));
            }
            if head_name == "errno"
                && let Some(value) = assigned
                && let Expr::String { value, .. } = value.as_ref()
                && let Ok(name) = value.as_string()
                && errno::code(name).is_none()
            {
                lints.push(at(format!(
                    "errno {name:?} is not an errno name (EACCES, EPERM, ECONNREFUSED, …)"
                )));
            }
        }
    }
    for (key, file) in data_keys(&data, &sources) {
        if !data_used(&all_text, &key) {
            lints.push(Lint {
                file,
                line: 1,
                col: 1,
                message: format!("data.{key} is not used by any policy"),
                denies_every_call: false,
            });
        }
    }
    lints.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    Ok(lints)
}

/// Whether any policy file mentions the package (`data.a.b`), or reaches
/// it through a computed key on a parent (`data.a[name]`).
fn refers_to(all_text: &str, package: &str) -> bool {
    let parts: Vec<&str> = package.split('.').collect();
    let computed = (1..parts.len()).any(|n| {
        let parent = parts[..n].join(".");
        all_text
            .match_indices(&format!("data.{parent}["))
            .any(|(i, m)| !all_text[i + m.len()..].starts_with('"'))
    });
    computed || refers_directly(all_text, package)
}

fn refers_directly(all_text: &str, package: &str) -> bool {
    // The package's own text mentions itself in its `package` line only as
    // `package a.b`, never as `data.a.b`, so any `data.a.b` not continued
    // by more of a name (`data.a.bc`) is a reference: `data.a.b.rule`,
    // `data.a.b[k]`, `import data.a.b`, `x := data.a.b`.
    let needle = format!("data.{package}");
    all_text.match_indices(&needle).any(|(i, m)| {
        !all_text[i + m.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// The data paths to check: each key at depth one and two, with the file
/// that provides it.
fn data_keys(data: &serde_json::Value, sources: &SourceSet) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(top) = data.as_object() else {
        return out;
    };
    for (k1, v1) in top {
        match v1.as_object() {
            Some(inner) if !inner.is_empty() => {
                for k2 in inner.keys() {
                    let key = format!("{k1}.{k2}");
                    out.push((key.clone(), sources.data_file_for(&key)));
                }
            }
            _ => out.push((k1.clone(), sources.data_file_for(k1))),
        }
    }
    out
}

/// `a.b` is used when the text mentions `data.a.b`, `data.a["b"]`, or uses
/// `data.a` as a whole (`data.a[`, `data.a ` …).
fn data_used(all_text: &str, key: &str) -> bool {
    let mut parts = key.splitn(2, '.');
    let k1 = parts.next().unwrap_or_default();
    let k2 = parts.next();
    let whole = |prefix: &str| {
        all_text.match_indices(prefix).any(|(i, m)| {
            let rest = &all_text[i + m.len()..];
            let next = rest.chars().next();
            // `data.a["b"]` names one key; `data.a[k]` or `data.a` alone uses all of them.
            !rest.starts_with("[\"")
                && !matches!(next, Some(c) if c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
        })
    };
    let k1_ref = [format!("data.{k1}"), format!("data[\"{k1}\"]")];
    match k2 {
        None => k1_ref.iter().any(|r| all_text.contains(r.as_str())),
        Some(k2) => k1_ref.iter().any(|r| {
            all_text.contains(&format!("{r}.{k2}"))
                || all_text.contains(&format!("{r}[\"{k2}\"]"))
                || whole(r)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{data_used, refers_to};

    #[test]
    fn package_references() {
        let text = "allow if data.cordon.tools[name].allow\nx := data.org.rules.y\nz := data.lib[\"fixed\"]\n";
        assert!(refers_to(text, "cordon.tools.web_fetch"));
        assert!(refers_to(text, "org.rules"));
        assert!(!refers_to(text, "org.other"));
        // A literal key names one package, not every one below.
        assert!(!refers_to(text, "lib.other"));
        // Through an import, and not by a longer name that starts the same.
        assert!(refers_to("import data.tools.fetch\n", "tools.fetch"));
        assert!(!refers_to("import data.tools.fetcher\n", "tools.fetch"));
    }

    #[test]
    fn data_references() {
        let text = "x := data.cordon.network.allow\ny := data.library[\"web-fetch\"].ports\nz := data.whole\n";
        assert!(data_used(text, "cordon.network"));
        assert!(!data_used(text, "cordon.netwrk"));
        assert!(data_used(text, "library.web-fetch"));
        assert!(!data_used(text, "library.coding-agent"));
        assert!(data_used(text, "whole.anything"));
        assert!(!data_used(text, "other"));
    }
}
