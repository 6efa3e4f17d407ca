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
//! The test is on the policy's syntax, and meant to be conservative: rules
//! are grouped by the document they may define, whatever their package and
//! spelling (`paths.class` in `package cordon` is `class` in `package
//! cordon.paths`; `m[k].c` may be `m[j].c`); a group can have two outputs
//! unless every definition gives one same literal value (`allow if …` many
//! times over is fine), or it has a single definition (an `else` chain is
//! one) with no iteration in its bodies or values: no `some`, no `walk`, no
//! `[…]` whose index is not a literal, also in an `every`'s domain, and no
//! `[v]` with a named variable inside a `not` (regorus binds it outside).
//! Iteration inside a comprehension, an `every`'s body or a `not` (with `_`)
//! yields one outcome, and does not count; but an object comprehension
//! whose query iterates can give one key two values, which OPA fails and
//! the VM does not either, so it is flagged wherever it is. (Two holes in a first version,
//! packages and `every`/`not`, were found by review.)

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// One step of a rule's path in `data`: a name, or any key (a variable
/// index, `m[k]`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Name(String),
    Any,
}

/// A rule's definitions, and the path they define.
#[derive(Debug)]
struct Group {
    path: Vec<Step>,
    defs: Vec<Definition>,
}

/// The first rule (in file order) that can have two different outputs, as
/// `file:line:col: why`, or `None` when no rule can.
///
/// Rules are grouped by the document they may define, across packages and
/// spellings (`paths.class` in `package cordon` and `class` in `package
/// cordon.paths`; `h.a` and `h["a"]`; `m[k].c` and `m[j].c`): two rules are
/// one group when their paths agree wherever both name a key, over the
/// shorter one.
pub(super) fn first_conflicting_rule(modules: &[Ref<Module>]) -> Option<String> {
    let mut groups: Vec<Group> = Vec::new();
    // An object comprehension whose keys can repeat with different values
    // (`{k: v | some [k, v] in pairs}`): OPA fails it, the VM keeps one.
    let mut objects: Vec<(String, String)> = Vec::new();
    for module in modules {
        for rule in &module.policy {
            let mut exprs: Vec<&Expr> = Vec::new();
            match rule.as_ref() {
                Rule::Spec { head, bodies, .. } => {
                    match head {
                        RuleHead::Compr { refr, assign, .. } => {
                            exprs.push(refr);
                            exprs.extend(assign.as_ref().map(|a| a.value.as_ref()));
                        }
                        RuleHead::Set { refr, key, .. } => {
                            exprs.push(refr);
                            exprs.extend(key.as_deref());
                        }
                        RuleHead::Func {
                            refr, args, assign, ..
                        } => {
                            exprs.push(refr);
                            exprs.extend(args.iter().map(|a| a.as_ref()));
                            exprs.extend(assign.as_ref().map(|a| a.value.as_ref()));
                        }
                    }
                    for body in bodies {
                        exprs.extend(body.assign.as_ref().map(|a| a.value.as_ref()));
                        query_exprs(&body.query, &mut exprs);
                    }
                }
                Rule::Default { value, .. } => exprs.push(value),
            }
            for e in exprs {
                deep_visit(e, &mut |e| {
                    if let Expr::ObjectCompr {
                        span,
                        key,
                        value,
                        query,
                        ..
                    } = e
                        && (iterates_query(query) || iterates(key) || iterates(value))
                    {
                        let at = format!("{}:{}:{}", span.source.file(), span.line, span.col);
                        objects.push((
                            at.clone(),
                            format!(
                                "{at}: an object comprehension can give one key two different values \
                                 (its query iterates): OPA fails such an evaluation, the compiled VM \
                                 would not, so this policy runs in the interpreter"
                            ),
                        ));
                    }
                });
            }
        }
    }
    for module in modules {
        let mut package = Vec::new();
        path_of(&module.package.refr, &mut package);
        if package.first() == Some(&Step::Name("data".into())) {
            package.remove(0);
        }
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
            let mut path = package.clone();
            path_of(refr, &mut path);
            let at = format!("{}:{}:{}", span.source.file(), span.line, span.col);
            let mut defs: Vec<Definition> = Vec::new();
            // Each body is a definition of its own unless it is an `else`
            // of the one before (the first body takes the head's value).
            let mut value = head_value;
            for (i, body) in bodies.iter().enumerate() {
                let is_else = i > 0 && body.is_else;
                if is_else {
                    value = body.assign.as_ref().map(|a| &a.value);
                } else if i > 0 {
                    value = head_value;
                }
                let iterates = iterates_query(&body.query) || value.is_some_and(|v| iterates(v));
                let literal = value.map_or(Some("true".to_owned()), |v| literal(v));
                match defs.last_mut() {
                    // One more branch of the same `else` chain.
                    Some(last) if is_else => {
                        last.iterates |= iterates;
                        last.literals.push(literal);
                    }
                    _ => defs.push(Definition {
                        at: at.clone(),
                        iterates,
                        literals: vec![literal],
                    }),
                }
            }
            // A rule without a body (`x := value`) is one definition.
            if bodies.is_empty() {
                defs.push(Definition {
                    at,
                    iterates: head_value.is_some_and(|v| iterates(v)),
                    literals: vec![head_value.map_or(Some("true".to_owned()), |v| literal(v))],
                });
            }
            // Into every group it may share a document with, merged.
            let mut joined: Option<usize> = None;
            let mut i = 0;
            while i < groups.len() {
                if !overlap(&groups[i].path, &path) {
                    i += 1;
                    continue;
                }
                match joined {
                    None => {
                        groups[i].defs.append(&mut defs);
                        joined = Some(i);
                        i += 1;
                    }
                    Some(j) => {
                        let mut other = groups.remove(i);
                        groups[j].defs.append(&mut other.defs);
                    }
                }
            }
            if joined.is_none() {
                groups.push(Group { path, defs });
            }
        }
    }
    let mut found: Vec<(String, String)> = groups
        .iter()
        .filter_map(|g| conflict(g).map(|why| (g.defs[0].at.clone(), why)))
        .chain(objects)
        .collect();
    found.sort();
    found.into_iter().next().map(|(_, why)| why)
}

/// Why the group's rule can have two values, if it can.
fn conflict(group: &Group) -> Option<String> {
    let defs = &group.defs;
    let mut literals = defs.iter().flat_map(|d| &d.literals);
    let first = literals.next()?;
    if first.is_some() && literals.all(|l| l == first) {
        return None;
    }
    let why = if defs.len() > 1 {
        format!("{} definitions with different values", defs.len())
    } else if defs[0].iterates {
        "a body or value that iterates (some, walk, or a [...] whose index is not a literal), \
         whose solutions can differ"
            .to_owned()
    } else {
        return None;
    };
    let name: Vec<&str> = group
        .path
        .iter()
        .map(|s| match s {
            Step::Name(n) => n.as_str(),
            Step::Any => "[_]",
        })
        .collect();
    Some(format!(
        "{}: data.{} can have two different values ({why}): OPA fails such an evaluation, the \
         compiled VM would not, so this policy runs in the interpreter",
        defs[0].at,
        name.join(".")
    ))
}

/// Whether two paths may name the same document, or one a part of the
/// other: equal wherever both name a key, over the shorter one.
fn overlap(a: &[Step], b: &[Step]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x == y || *x == Step::Any || *y == Step::Any)
}

/// The steps of a reference (`a.b["c"][k]`): names for names and literal
/// keys, `Any` for anything computed.
fn path_of(e: &Expr, out: &mut Vec<Step>) {
    match e {
        Expr::Var { span, .. } => out.push(Step::Name(span.text().to_owned())),
        Expr::RefDot { refr, field, .. } => {
            path_of(refr, out);
            out.push(Step::Name(field.0.text().to_owned()));
        }
        Expr::RefBrack { refr, index, .. } => {
            path_of(refr, out);
            out.push(match index.as_ref() {
                Expr::String { value, .. } | Expr::RawString { value, .. } => value
                    .as_string()
                    .map_or(Step::Any, |s| Step::Name(s.as_ref().to_owned())),
                _ => Step::Any,
            });
        }
        _ => out.push(Step::Any),
    }
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
                // Its domain is evaluated in the body, and can enumerate
                // (`every m in markers[c]`); its own query cannot.
                Literal::Every { domain, .. } => iterates(domain),
                // At most one outcome, but regorus binds a named variable
                // out of it (`not input.o[k] == 3`); `_` stays inside.
                Literal::NotExpr { expr, .. } => names_a_variable_index(expr),
            }
    })
}

/// Whether an expression has a `[v]` index with a named variable.
fn names_a_variable_index(e: &Expr) -> bool {
    let mut found = false;
    visit(e, &mut |e| {
        if let Expr::RefBrack { index, .. } = e
            && let Expr::Var { span, .. } = index.as_ref()
            && span.text() != "_"
        {
            found = true;
        }
    });
    found
}

/// The expressions of a query's statements, `with` values included.
fn query_exprs<'a>(q: &'a Query, out: &mut Vec<&'a Expr>) {
    for stmt in &q.stmts {
        out.extend(stmt.with_mods.iter().map(|w| w.r#as.as_ref()));
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                out.extend(key.as_deref());
                out.push(value);
                out.push(collection);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => out.push(expr),
            Literal::Every { domain, query, .. } => {
                out.push(domain);
                query_exprs(query, out);
            }
        }
    }
}

/// As [`visit`], and into comprehensions' queries too.
fn deep_visit(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    visit(e, &mut |e| {
        f(e);
        let (terms, query): (Vec<&Expr>, &Query) = match e {
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                (vec![term], query)
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => (vec![key, value], query),
            _ => return,
        };
        let mut inner = terms;
        query_exprs(query, &mut inner);
        for i in inner {
            deep_visit(i, f);
        }
    });
}

/// Calls `f` on `e` and every expression inside it, but not inside
/// comprehensions (one value each, whatever they iterate).
fn visit(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| visit(i, f))
        }
        Expr::Object { fields, .. } => fields.iter().for_each(|(_, k, v)| {
            visit(k, f);
            visit(v, f);
        }),
        Expr::Call { params, .. } => params.iter().for_each(|p| visit(p, f)),
        Expr::UnaryExpr { expr, .. } => visit(expr, f),
        Expr::RefDot { refr, .. } => visit(refr, f),
        Expr::RefBrack { refr, index, .. } => {
            visit(refr, f);
            visit(index, f);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            visit(lhs, f);
            visit(rhs, f);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                visit(k, f);
            }
            visit(value, f);
            visit(collection, f);
        }
        _ => {}
    }
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
        in_modules(&[&format!("package cordon\n{rules}")])
    }

    fn in_modules(modules: &[&str]) -> Option<String> {
        let mut engine = regorus::Engine::new();
        for (i, m) in modules.iter().enumerate() {
            let name = if i == 0 {
                "p.rego".into()
            } else {
                format!("m{i}.rego")
            };
            engine.add_policy(name, (*m).to_owned()).unwrap();
        }
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
            // The same document under two spellings (found by review).
            "h.a := 1 if input.a\nh[\"a\"] := 2 if input.b",
            "m[k].c := 1 if { k := \"a\"; input.a }\nm[j].c := 2 if { j := \"a\"; input.b }",
            "a.b := {\"c\": 1} if input.a\na.b.c := 2 if input.b",
            // An `every` whose domain enumerates; a variable bound out of `not`.
            "x := c if { every m in input.markers[c] { m > 0 } }",
            "h := k if { not input.o[k] == [3] }",
            // An object comprehension whose keys can repeat (found while
            // fixing the above), also inside another comprehension or a set.
            "m := {k: v | some [k, v] in input.pairs}",
            "deny contains x if { x := [{k: 1 | some k in input.ks}] }",
            "ms := [m | m := {k: v | some [k, v] in input.pairs}]",
        ] {
            let found = conflicting(rules);
            assert!(found.is_some(), "not found in {rules:?}");
            assert!(found.unwrap().starts_with("p.rego:"), "{rules:?}");
        }
    }

    /// One document defined from two packages, or a nested rule beside its
    /// parent's package (found by review).
    #[test]
    fn rules_of_one_document_in_two_packages_are_found() {
        let found = in_modules(&[
            "package cordon\nimport data.cordon.paths\npaths.class := \"other\" if input.x",
            "package cordon.paths\nclass := \"cred\" if input.y",
        ]);
        assert!(found.is_some_and(|f| f.contains("data.cordon.paths.class")));
        let found = in_modules(&[
            "package cordon\na.b.c := 1 if input.x",
            "package cordon.a\nb.c := 2 if input.y",
        ]);
        assert!(found.is_some());
        // Two packages, two documents.
        let found = in_modules(&[
            "package cordon\nclass := \"a\" if input.x",
            "package cordon.paths\nclass := \"b\" if input.y",
        ]);
        assert_eq!(found, None);
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
            "x := 1 if { every v in input.vs { input.o[v] > 0 } }",
            "m := {k: 1 | k := input.x}",
            "f(a) := a + 1",
            "x := concat(\"\", [input.p, \"/\"])",
            "default x := 0\nx := input.n if input.a",
            "risky if { some a in input.argv; startswith(a, \"-\") }",
        ] {
            assert_eq!(conflicting(rules), None, "{rules:?}");
        }
    }
}
