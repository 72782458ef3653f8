//! Rewrites of client SQL beyond datafusion-pg-catalog's rules, each giving the answer
//! PostgreSQL would give.
//!
//! - **Catalog lookups.** DataFusion runs a correlated scalar subquery only when it is
//!   aggregated (it cannot know that the subquery returns at most one row), and cannot
//!   decorrelate a condition on outer columns alone inside it. Client catalog queries (SQLAlchemy's
//!   column reflection: `(SELECT pg_get_expr(…) FROM pg_attrdef WHERE pg_attribute.atthasdef
//!   AND pg_attrdef.adrelid = pg_attribute.attrelid …)`) are written for PostgreSQL, which
//!   checks that at run time. A scalar subquery that reads only `pg_catalog` tables and
//!   aggregates nothing is a lookup of at most one row: its value is wrapped in `max(…)`, and
//!   conditions on the outer row alone move out to `CASE WHEN … THEN (subquery) END` (no row and
//!   a false condition both give NULL). One whose value reads the outer row, which DataFusion
//!   cannot run at all, is a lookup of a catalog row Hoistway never has (an identity column's
//!   sequence) and becomes NULL, as datafusion-pg-catalog does with correlated subqueries in a
//!   select list. Subqueries over Hoistway's own tables stay as written.
//! - **Search path.** Grafana finds the schemas on the search path with
//!   `SELECT CASE WHEN trim(s[i]) = '"$user"' … FROM generate_series(…) AS i,
//!   string_to_array(current_setting('search_path'), ',') s`, which DataFusion cannot run
//!   (an array function in `FROM`); `IN (that)` becomes `IN ('public')`, the one schema on
//!   Hoistway's search path (`"$user"` names no schema here).

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    Query, SelectItem, SetExpr, Statement, TableFactor, Value, visit_expressions,
    visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use pgwire::api::Type;

const AGGREGATES: [&str; 12] = [
    "max",
    "min",
    "count",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
];

/// Grafana's search path expansion, as tokens to find (whitespace aside).
const SEARCH_PATH_SQL: &str = r#"SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM generate_series(
        array_lower(string_to_array(current_setting('search_path'),','),1),
        array_upper(string_to_array(current_setting('search_path'),','),1)
    ) as i, string_to_array(current_setting('search_path'),',') s"#;

fn tokens(sql: &str) -> Option<Vec<Token>> {
    Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()
}

/// `sql` with every search path expansion replaced by the schemas on Hoistway's search path.
pub fn search_path(sql: &str) -> Cow<'_, str> {
    if !sql.contains("search_path") {
        return Cow::Borrowed(sql);
    }
    let (Some(all), Some(pattern)) = (tokens(sql), tokens(SEARCH_PATH_SQL)) else {
        return Cow::Borrowed(sql);
    };
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    let pattern: Vec<&Token> = pattern.iter().filter(|t| significant(t)).collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut replaced = false;
    while i < all.len() {
        // Match the pattern from token i, skipping whitespace in the text.
        let mut j = i;
        let mut matched = 0;
        while matched < pattern.len() && j < all.len() {
            if !significant(&all[j]) {
                j += 1;
                continue;
            }
            if !same(&all[j], pattern[matched]) {
                break;
            }
            matched += 1;
            j += 1;
        }
        if matched == pattern.len() {
            out.push_str("'public'");
            replaced = true;
            i = j;
        } else {
            out.push_str(&all[i].to_string());
            i += 1;
        }
    }
    if replaced {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(sql)
    }
}

/// `sql` with JDBC-style `?` parameters numbered `$1, $2, …` in order, as DataFusion numbers
/// parameters (Flight SQL clients write either). Text without `?` parameters is unchanged.
pub fn positional_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let Some(all) = tokens(sql) else {
        return Cow::Borrowed(sql);
    };
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for token in &all {
        match token {
            // PostgreSQL's tokenizer reads a lone `?` as the jsonb operator; Hoistway has none.
            Token::Question => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    if n == 0 {
        Cow::Borrowed(sql)
    } else {
        Cow::Owned(out)
    }
}

/// Tokens equal as SQL: keywords and identifiers regardless of case.
fn same(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::Word(a), Token::Word(b)) => {
            a.quote_style == b.quote_style
                && if a.quote_style.is_some() {
                    a.value == b.value
                } else {
                    a.value.eq_ignore_ascii_case(&b.value)
                }
        }
        _ => a == b,
    }
}

/// The SQL type a client-declared parameter type is cast to, where DataFusion takes its name.
fn sql_type(t: &Type) -> Option<&'static str> {
    Some(match *t {
        Type::BOOL => "BOOLEAN",
        Type::INT2 => "SMALLINT",
        Type::INT4 => "INT",
        Type::INT8 => "BIGINT",
        Type::FLOAT4 => "REAL",
        Type::FLOAT8 => "DOUBLE",
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => "VARCHAR",
        Type::DATE => "DATE",
        _ => return None,
    })
}

/// Casts each `$n` to the type the client declared for it (a driver such as psycopg declares
/// a Python `True` as `bool`), so that DataFusion can plan calls it could not type alone
/// (`pg_get_constraintdef(oid, $2)`). Parameters declared as unknown (OID 0) stay as they are,
/// typed by where they appear.
pub fn declared_parameters(statement: &mut Statement, declared: &[Option<Type>]) {
    if declared
        .iter()
        .all(|t| t.as_ref().and_then(sql_type).is_none())
    {
        return;
    }
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(name) = &v.value
            && let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            && let Some(Some(t)) = n.checked_sub(1).and_then(|i| declared.get(i))
            && let Some(sql) = sql_type(t)
            && let Some(cast) = parse_expr(&format!("CAST({name} AS {sql})"))
        {
            *expr = cast;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Makes every one-row catalog lookup in `statement` something DataFusion plans (see above),
/// and `generate_subscripts(a, 1)` the subscripts of `a` (as `unnest(range(…))`, which
/// DataFusion unnests side by side with `unnest(a)` as PostgreSQL does).
pub fn catalog_lookups(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        match expr {
            Expr::Subquery(query) => {
                if let Some(rewritten) = lookup(query) {
                    *expr = rewritten;
                }
            }
            Expr::Function(f)
                if f.name
                    .to_string()
                    .eq_ignore_ascii_case("generate_subscripts") =>
            {
                if let FunctionArguments::List(list) = &f.args
                    && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array)), _] =
                        list.args.as_slice()
                    && let Some(rewritten) = parse_expr(&format!(
                        "unnest(range(1, CAST(coalesce(array_length({array}, 1), 0) AS BIGINT) + 1))"
                    ))
                {
                    *expr = rewritten;
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

fn is_catalog(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("pg_catalog.") || name.starts_with("\"pg_catalog\".")
}

fn aggregates(expr: &Expr) -> bool {
    visit_expressions(expr, |e| match e {
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let name = name.rsplit('.').next().unwrap_or_default();
            if AGGREGATES.contains(&name) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// The names a subquery's own columns may be qualified with: each relation's alias, or its
/// name, qualified or not.
fn inner_names(query: &Query) -> HashSet<String> {
    let mut names = HashSet::new();
    if let SetExpr::Select(select) = query.body.as_ref() {
        for from in &select.from {
            for factor in
                std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
            {
                if let TableFactor::Table { name, alias, .. } = factor {
                    match alias {
                        Some(alias) => {
                            names.insert(alias.name.value.to_ascii_lowercase());
                        }
                        None => {
                            let full = name.to_string().to_ascii_lowercase();
                            if let Some(last) = full.rsplit('.').next() {
                                names.insert(last.to_string());
                            }
                            names.insert(full);
                        }
                    }
                }
            }
        }
    }
    names
}

/// Whether a condition reads the outer row only: qualified columns of other relations, and no
/// column of the subquery's own (an unqualified name counts as the subquery's).
fn outer_only(condition: &Expr, inner: &HashSet<String>) -> bool {
    let mut outer = false;
    let inner_seen = visit_expressions(condition, |e| match e {
        Expr::Identifier(_) | Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            ControlFlow::Break(())
        }
        Expr::CompoundIdentifier(parts) => {
            if inner.contains(&qualifier(parts)) {
                ControlFlow::Break(())
            } else {
                outer = true;
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break();
    outer && !inner_seen
}

/// Whether an expression reads a column qualified with another relation than the subquery's.
fn reads_outer(expr: &Expr, inner: &HashSet<String>) -> bool {
    visit_expressions(expr, |e| match e {
        Expr::CompoundIdentifier(parts) if !inner.contains(&qualifier(parts)) => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn qualifier(parts: &[Ident]) -> String {
    parts[..parts.len() - 1]
        .iter()
        .map(|p| p.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

fn conjuncts(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner, out)
        }
        other => out.push(other),
    }
}

fn and(parts: Vec<Expr>) -> Option<Expr> {
    parts.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    })
}

fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .ok()
}

/// The expression a one-row catalog lookup becomes, or `None` to leave it as written.
fn lookup(query: &mut Query) -> Option<Expr> {
    let inner = inner_names(query);
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if select.projection.len() != 1 || select.from.is_empty() || grouped {
        return None;
    }
    let outside = visit_relations(&select.from, |name| {
        if is_catalog(&name.to_string()) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    if outside.is_break() {
        return None;
    }
    let (SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. }) =
        &mut select.projection[0]
    else {
        return None;
    };
    if aggregates(value) {
        return None;
    }
    if reads_outer(value, &inner) {
        // DataFusion cannot run a subquery whose value reads the outer row; PostgreSQL-side
        // this is a lookup of a catalog row Hoistway never has (SQLAlchemy's identity
        // options: no column is an identity column), so its answer is NULL.
        return Some(Expr::Value(Value::Null.with_empty_span()));
    }
    // Rewritten in place; replaced by a CASE only when outer conditions move out.
    *value = parse_expr(&format!("max({value})"))?;
    let mut parts = Vec::new();
    if let Some(selection) = select.selection.take() {
        conjuncts(selection, &mut parts);
    }
    let (outer, own): (Vec<Expr>, Vec<Expr>) =
        parts.into_iter().partition(|c| outer_only(c, &inner));
    select.selection = and(own);
    let outer = and(outer)?;
    parse_expr(&format!("CASE WHEN {outer} THEN ({query}) END"))
}
