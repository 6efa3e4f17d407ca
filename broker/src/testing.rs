//! Policy unit tests, run the way `opa test` runs them: every rule whose name
//! starts with `test_` in a `*_test.rego` file (or any loaded module) is
//! evaluated; it passes when it is `true`, fails when it is `false` or
//! undefined, and is an error when evaluation fails.
//!
//! Coverage is regorus's line coverage, grouped by rule: a rule is covered
//! when the tests evaluated every line of it, so a rule whose body never got
//! past its first condition shows up as not covered.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use regorus::{
    Engine, Value,
    unstable::{Rule, RuleHead},
    utils::limits::ExecutionTimerConfig,
};

use crate::policy::{PolicyError, PolicySource, SourceSet, build_engine, first_lines};

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Error,
}

/// One `test_` rule and its result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestResult {
    /// `data.<package>.<rule>`.
    pub name: String,
    pub file: String,
    pub line: u32,
    pub outcome: Outcome,
    /// The error, for [`Outcome::Error`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The inputs the test gave (`with input as …`), evaluated, for tests that
    /// did not pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<serde_json::Value>,
    /// Output of `print()` during the test.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prints: Vec<String>,
    #[serde(rename = "duration_us", serialize_with = "micros")]
    pub duration: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// Coverage of one rule of a policy (not test) file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleCoverage {
    pub file: String,
    pub line: u32,
    /// The rule's name as written (`allow`, `deny`, `under`).
    pub rule: String,
    pub covered_lines: usize,
    /// Lines of the rule the tests never evaluated.
    pub not_covered: Vec<u32>,
}

/// Line and rule coverage of the policy files.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Coverage {
    pub covered_lines: usize,
    pub not_covered_lines: usize,
    pub percent: f64,
    pub rules: Vec<RuleCoverage>,
}

/// The results of a test run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestReport {
    pub tests: Vec<TestResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.count(Outcome::Pass)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.tests.iter().filter(|t| t.outcome == outcome).count()
    }

    /// True when there were tests and all passed.
    pub fn ok(&self) -> bool {
        !self.tests.is_empty() && self.passed() == self.tests.len()
    }
}

/// Settings of a test run.
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub coverage: bool,
    /// Only tests whose full name contains this.
    pub filter: Option<String>,
    /// Per-test evaluation limit.
    pub timeout: Duration,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            coverage: false,
            filter: None,
            timeout: Duration::from_secs(5),
        }
    }
}

struct Discovered {
    package: String,
    rule: String,
    file: String,
    line: u32,
    /// Source of the rule, for finding its `with input as` expressions.
    text: String,
}

/// Loads `paths` with their `*_test.rego` files and runs every `test_` rule.
pub fn run(paths: &[PathBuf], opts: &TestOptions) -> Result<TestReport, PolicyError> {
    let sources = SourceSet::read_including_tests(&PolicySource::Paths(paths.to_vec()))?;
    let data = sources.data_value()?;
    let mut engine = build_engine(&sources, &data, false)?;
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: opts.timeout,
        check_interval: std::num::NonZeroU32::new(32).unwrap_or(std::num::NonZeroU32::MIN),
    });
    engine.set_gather_prints(true);
    if opts.coverage {
        engine.set_enable_coverage(true);
    }
    let tests = discover(&mut engine, opts.filter.as_deref())?;
    let mut results = Vec::with_capacity(tests.len());
    for t in &tests {
        let name = format!("data.{}.{}", t.package, t.rule);
        let start = Instant::now();
        let value = engine.eval_rule(name.clone());
        let duration = start.elapsed();
        let prints = engine.take_prints().unwrap_or_default();
        let (outcome, error) = match value {
            Ok(Value::Bool(true)) => (Outcome::Pass, None),
            Ok(_) => (Outcome::Fail, None),
            Err(e) => (Outcome::Error, Some(first_lines(&e))),
        };
        let inputs = if outcome == Outcome::Pass {
            vec![]
        } else {
            test_inputs(&mut engine.clone(), &t.package, &t.text)
        };
        results.push(TestResult {
            name,
            file: t.file.clone(),
            line: t.line,
            outcome,
            error,
            inputs,
            prints,
            duration,
        });
    }
    let coverage = if opts.coverage {
        Some(coverage(&mut engine)?)
    } else {
        None
    };
    Ok(TestReport {
        tests: results,
        coverage,
    })
}

/// Every `test_` rule, once per name, in file and line order.
fn discover(engine: &mut Engine, filter: Option<&str>) -> Result<Vec<Discovered>, PolicyError> {
    let mut found: Vec<Discovered> = Vec::new();
    for module in engine.get_modules() {
        let package = crate::policy::package_name(module);
        for rule in &module.policy {
            let Rule::Spec { span, head, .. } = rule.as_ref() else {
                continue;
            };
            // A test is a complete rule; a function named test_ is a helper.
            let RuleHead::Compr { refr, .. } = head else {
                continue;
            };
            let name = refr.span().text();
            if !name.starts_with("test_") {
                continue;
            }
            let full = format!("data.{package}.{name}");
            if filter.is_some_and(|f| !full.contains(f))
                || found.iter().any(|d| d.package == package && d.rule == name)
            {
                continue;
            }
            found.push(Discovered {
                package: package.clone(),
                rule: name.to_owned(),
                file: span.source.file().clone(),
                line: span.line,
                text: span.text().to_owned(),
            });
        }
    }
    found.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(found)
}

/// The inputs a failing test gave the policy, found in its source: the values
/// of `with input as E`, and of calls to the package's helpers that build an
/// input document (an object with a `kind`), such as `read("/etc/shadow")`.
/// Each is evaluated in the test's package; one that cannot be evaluated on
/// its own is given as written.
fn test_inputs(engine: &mut Engine, package: &str, text: &str) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut push = |v: serde_json::Value| {
        if !out.contains(&v) {
            out.push(v);
        }
    };
    // The body only: the head names the test itself.
    let body = text.find(" if ").map_or(text, |i| &text[i + 4..]);
    let mut rest = body;
    while let Some(at) = rest.find("with input as ") {
        rest = &rest[at + "with input as ".len()..];
        let expr = leading_expression(rest);
        push(
            evaluate_in(engine, package, expr)
                .unwrap_or_else(|| serde_json::Value::String(expr.to_owned())),
        );
    }
    for (i, _) in body.match_indices('(') {
        // Back to the start of the name; Rego names are ASCII, and the
        // character before one may be anything (`"€(5)"`).
        let start = body[..i]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |(j, c)| j + c.len_utf8());
        let name = &body[start..i];
        if name.is_empty() || name.contains('.') || !name.starts_with(char::is_alphabetic) {
            continue;
        }
        let call = leading_expression(&body[start..]);
        if let Some(v) = evaluate_in(engine, package, call)
            && v.get("kind").is_some()
        {
            push(v);
        }
    }
    out
}

/// Evaluates `expr` as written in `package`: a name or call refers to the
/// package; a literal stands alone.
fn evaluate_in(engine: &mut Engine, package: &str, expr: &str) -> Option<serde_json::Value> {
    let local = expr.starts_with(|c: char| c.is_alphabetic() || c == '_')
        && !expr.starts_with("data.")
        && !expr.starts_with("input");
    let query = if local {
        format!("data.{package}.{expr}")
    } else {
        expr.to_owned()
    };
    let value = engine.eval_query(query, false).ok().and_then(|r| {
        r.result
            .first()
            .and_then(|q| q.expressions.first())
            .map(|e| e.value.clone())
    })?;
    if value == Value::Undefined {
        return None;
    }
    serde_json::from_str(&value.to_json_str().ok()?).ok()
}

/// The expression at the start of `s`: up to the end of the line, a `with`,
/// or a `;`, at bracket depth 0.
fn leading_expression(s: &str) -> &str {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' if depth == 0 => return s[..i].trim(),
            '}' | ']' | ')' => depth -= 1,
            '\n' | ';' if depth == 0 => return s[..i].trim(),
            ' ' if depth == 0 && s[i..].starts_with(" with ") => return s[..i].trim(),
            _ => {}
        }
    }
    s.trim()
}

/// Line coverage of the non-test files, grouped by rule.
fn coverage(engine: &mut Engine) -> Result<Coverage, PolicyError> {
    let report = engine
        .get_coverage_report()
        .map_err(|e| PolicyError::compile(e.to_string()))?;
    let is_policy = |file: &str| !file.ends_with("_test.rego");
    let mut rules = Vec::new();
    for module in engine.get_modules() {
        for rule in &module.policy {
            let (span, name) = match rule.as_ref() {
                Rule::Spec { span, head, .. } => {
                    let refr = match head {
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. } => refr,
                    };
                    (span, refr.span().text().to_owned())
                }
                // `default x := v` has no body to cover.
                Rule::Default { .. } => continue,
            };
            let file = span.source.file();
            if !is_policy(file) {
                continue;
            }
            let Some(f) = report.files.iter().find(|f| &f.path == file) else {
                continue;
            };
            let last = span.line + span.text().matches('\n').count() as u32;
            let lines = span.line..=last;
            let not_covered: Vec<u32> = f
                .not_covered
                .iter()
                .copied()
                .filter(|l| lines.contains(l))
                .collect();
            let covered_lines = f.covered.iter().filter(|l| lines.contains(l)).count();
            rules.push(RuleCoverage {
                file: file.clone(),
                line: span.line,
                rule: name,
                covered_lines,
                not_covered,
            });
        }
    }
    rules.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let files = report.files.iter().filter(|f| is_policy(&f.path));
    let (covered, not_covered) = files.fold((0, 0), |(c, n), f| {
        (c + f.covered.len(), n + f.not_covered.len())
    });
    let total = covered + not_covered;
    Ok(Coverage {
        covered_lines: covered,
        not_covered_lines: not_covered,
        percent: if total == 0 {
            100.0
        } else {
            covered as f64 * 100.0 / total as f64
        },
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::leading_expression;

    #[test]
    fn test_inputs_survive_any_text() {
        // A failing test's source with non-ASCII before a parenthesis must not
        // split a character (it panicked once).
        let mut engine = regorus::Engine::new();
        let text = "test_x if {\n  msg := \"price €(5)\"\n  f(\"é\")\n}";
        assert!(super::test_inputs(&mut engine, "p", text).is_empty());
    }

    #[test]
    fn leading_expression_stops_at_depth_zero() {
        assert_eq!(leading_expression("x\n  y"), "x");
        assert_eq!(
            leading_expression("{\"a\": [1, \"}\"]} with data.x as 1"),
            "{\"a\": [1, \"}\"]}"
        );
        assert_eq!(leading_expression("f(\"/etc\")\n}"), "f(\"/etc\")");
        assert_eq!(leading_expression("inp}"), "inp");
        assert_eq!(leading_expression("{\n \"a\": 1\n}\n"), "{\n \"a\": 1\n}");
    }
}
