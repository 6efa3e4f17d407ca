//! Rules that can have two outputs, where regorus's compiled VM and OPA part
//! ways.
//!
//! When a complete rule, a function or a partial object rule has two outputs
//! that differ (two definitions that hold with different values, or one body
//! with two solutions), OPA and regorus's interpreter fail the evaluation,
//! which the broker turns into a denial. The VM of regorus 0.14 instead
//! leaves the rule undefined (two definitions) or keeps one of the values
//! (one body): an undefined helper turns `not helper` true and drops the
//! `deny` reasons that use it, so the VM could allow what OPA denies. A
//! policy with such a rule is therefore evaluated by the interpreter.
//!
//! The test is conservative, on the policy's syntax: a rule can have two
//! outputs unless every definition gives one same literal value (`allow if
//! …` many times over is fine), or it has a single definition (an `else`
//! chain is one) with no iteration in its bodies or values: no `some`, no
//! `walk`, and no `[…]` whose index is not a literal. Iteration inside a
//! comprehension, `every` or `not` yields one outcome, and does not count.

use std::collections::BTreeMap;

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// The first rule (in file order) that can have two different outputs, as
/// `file:line:col: why`, or `None` when no rule can.
pub(super) fn first_conflicting_rule(modules: &[Ref<Module>]) -> Option<String> {
    // (package, rule path) -> its definitions.
    let mut rules: BTreeMap<(String, String), Vec<Definition>> = BTreeMap::new();
    let mut order = Vec::new();
    for module in modules {
        let package = super::package_name(module);
        for rule in &module.policy {
            let Rule::Spec { span, head, bodies } = rule.as_ref() else {
                continue;
            };
            let (refr, head_value) = match head {
                // A set gathers its members: nothing to conflict.
                RuleHead::Set { .. } => continue,
                RuleHead::Compr { refr, assign, .. } | RuleHead::Func { refr, assign, .. } => {
                    (refr, assign.as_ref().map(|a| &a.value))
                }
            };
            // `m[k] := v` is one object, whatever its keys.
            let path = match refr.as_ref() {
                Expr::RefBrack { refr: base, .. } => base.span().text().to_owned(),
                _ => refr.span().text().to_owned(),
            };
            // Each body is a definition of its own unless it is an `else`
            // of the one before (the first body takes the head's value).
            let mut value = head_value;
            for (i, body) in bodies.iter().enumerate() {
                if i > 0 && body.is_else {
                    value = body.assign.as_ref().map(|a| &a.value);
                } else if i > 0 {
                    value = head_value;
                }
                let iterates = iterates_query(&body.query) || value.is_some_and(|v| iterates(v));
                let literal = match value {
                    None => Some("true".to_owned()),
                    Some(v) => literal(v),
                };
                let key = (package.clone(), path.clone());
                if !rules.contains_key(&key) {
                    order.push(key.clone());
                }
                let defs = rules.entry(key).or_default();
                match defs.last_mut() {
                    // One more branch of the same `else` chain.
                    Some(last) if i > 0 && body.is_else => {
                        last.iterates |= iterates;
                        last.literals.push(literal);
                    }
                    _ => defs.push(Definition {
                        at: format!("{}:{}:{}", span.source.file(), span.line, span.col),
                        iterates,
                        literals: vec![literal],
                    }),
                }
            }
            // A rule without a body (`x := value`) is one definition.
            if bodies.is_empty() {
                let key = (package.clone(), path.clone());
                if !rules.contains_key(&key) {
                    order.push(key.clone());
                }
                rules.entry(key).or_default().push(Definition {
                    at: format!("{}:{}:{}", span.source.file(), span.line, span.col),
                    iterates: head_value.is_some_and(|v| iterates(v)),
                    literals: vec![head_value.map_or(Some("true".to_owned()), |v| literal(v))],
                });
            }
        }
    }
    order.into_iter().find_map(|key| {
        let defs = &rules[&key];
        let mut literals = defs.iter().flat_map(|d| &d.literals);
        let first = literals.next()?;
        let one_value = first.is_some() && literals.all(|l| l == first);
        if one_value {
            return None;
        }
        let (package, path) = &key;
        let why = if defs.len() > 1 {
            format!("{} definitions with different values", defs.len())
        } else if defs[0].iterates {
            "a body or value that iterates (some, walk, or a [...] whose index is not a literal), \
             whose solutions can differ"
                .to_owned()
        } else {
            return None;
        };
        Some(format!(
            "{}: data.{package}.{path} can have two different values ({why}): OPA fails such an \
             evaluation, the compiled VM would not, so this policy runs in the interpreter",
            defs[0].at
        ))
    })
}

/// One definition of a rule: an `else` chain's branches together.
#[derive(Debug)]
struct Definition {
    at: String,
    iterates: bool,
    /// Each branch's value as text if it is a literal.
    literals: Vec<Option<String>>,
}

/// The value's text if it is a literal (scalars, and arrays, sets and
/// objects of literals).
fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.to_string()),
        Expr::Array { items, .. } | Expr::Set { items, .. } => items
            .iter()
            .all(|i| literal(i).is_some())
            .then(|| e.span().text().to_owned()),
        Expr::Object { fields, .. } => fields
            .iter()
            .all(|(_, k, v)| literal(k).is_some() && literal(v).is_some())
            .then(|| e.span().text().to_owned()),
        _ => None,
    }
}

/// Whether a query can have more than one solution.
fn iterates_query(q: &Query) -> bool {
    q.stmts.iter().any(|stmt| {
        stmt.with_mods.iter().any(|w| iterates(&w.r#as))
            || match &stmt.literal {
                Literal::SomeVars { .. } | Literal::SomeIn { .. } => true,
                Literal::Expr { expr, .. } => iterates(expr),
                // At most one outcome each.
                Literal::NotExpr { .. } | Literal::Every { .. } => false,
            }
    })
}

/// Whether an expression can take more than one value: a `[…]` whose index
/// is not a literal (an unbound variable enumerates), or `walk`.
fn iterates(e: &Expr) -> bool {
    match e {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => false,
        // One value each, whatever they iterate inside.
        Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => false,
        Expr::Array { items, .. } | Expr::Set { items, .. } => items.iter().any(|i| iterates(i)),
        Expr::Object { fields, .. } => fields.iter().any(|(_, k, v)| iterates(k) || iterates(v)),
        Expr::Call { fcn, params, .. } => {
            fcn.span().text() == "walk" || params.iter().any(|p| iterates(p))
        }
        Expr::UnaryExpr { expr, .. } => iterates(expr),
        Expr::RefDot { refr, .. } => iterates(refr),
        Expr::RefBrack { refr, index, .. } => literal(index).is_none() || iterates(refr),
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => iterates(lhs) || iterates(rhs),
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => key.as_ref().is_some_and(|k| iterates(k)) || iterates(value) || iterates(collection),
        // Anything this regorus adds later: assume the worst.
        #[allow(unreachable_patterns)]
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::first_conflicting_rule;

    fn conflicting(rules: &str) -> Option<String> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("p.rego".into(), format!("package cordon\n{rules}"))
            .unwrap();
        first_conflicting_rule(engine.get_modules())
    }

    #[test]
    fn rules_that_can_have_two_values_are_found() {
        for rules in [
            "x := 1 if input.a\nx := 2 if input.b",
            "x := input.v if input.a\nx := 2 if input.b",
            "x := v if { some v in input.vs }",
            "x := v if { some v; input.vs[v] }",
            "x := input.vs[_]",
            "x := input.vs[i] if input.a",
            "x := p if walk(input, [p, _])",
            "f(a) := 1 if a > 0\nf(a) := 2 if a > 1",
            "m[k] := v if { some k, v in input.o }",
            // An `else` chain, but a branch iterates.
            "x := 1 if input.a\nelse := v if { some v in input.vs }",
        ] {
            let found = conflicting(rules);
            assert!(found.is_some(), "not found in {rules:?}");
            assert!(found.unwrap().starts_with("p.rego:"), "{rules:?}");
        }
    }

    #[test]
    fn rules_with_one_value_are_not() {
        for rules in [
            "allow if input.a\nallow if input.b",
            "x := 1 if input.a\nx := 1 if input.b",
            "x := [1, \"a\"] if input.a\nx := [1, \"a\"] if input.b",
            "deny contains v if { some v in input.vs }",
            "x := 1 if input.a\nelse := 2 if input.b",
            "x := input.vs[0]",
            "x := input.o[\"k\"].v",
            "x := count([v | some v in input.vs])",
            "x := 1 if { every v in input.vs { v > 0 } }",
            "x := 1 if { not input.vs[_] == 2 }",
            "f(a) := a + 1",
            "x := concat(\"\", [input.p, \"/\"])",
            "default x := 0\nx := input.n if input.a",
            "risky if { some a in input.argv; startswith(a, \"-\") }",
        ] {
            assert_eq!(conflicting(rules), None, "{rules:?}");
        }
    }
}
