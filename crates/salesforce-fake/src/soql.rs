//! The SOQL subset the fake understands, parsed and evaluated against the records:
//! `SELECT f1, Rel.f2 | COUNT() FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
//! [LIMIT n] [OFFSET n]`, with `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `[NOT] IN (...)`, `AND`, `OR`,
//! `NOT` and parentheses; literals: quoted strings with SOQL's escapes, `true`/`false`, `null`,
//! numbers, date and datetime literals. Keywords and names are case-insensitive; text comparisons
//! too, as in Salesforce. Errors carry Salesforce's codes (`MALFORMED_QUERY`, `INVALID_FIELD`,
//! `INVALID_TYPE`, `INVALID_QUERY_FILTER_OPERATOR`) and its "ERROR at Row:1:Column:N" message form.

use crate::faults::SfError;
use crate::ids;
use crate::schema::{FieldDef, FieldType, ObjectSchema};
use crate::state::{parse_datetime, Record, State};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    Comma,
    LParen,
    RParen,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn error_at(q: &str, pos: usize, code: &str, msg: &str) -> SfError {
    // Salesforce echoes the query, points at the column, then states the problem.
    let before = &q[..pos.min(q.len())];
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    let line = q[line_start..].lines().next().unwrap_or("");
    SfError::new(400, code, format!("\n{line}\n{}^\nERROR at Row:{row}:Column:{col}\n{msg}", " ".repeat(col - 1)))
}

fn lex(q: &str) -> Result<Vec<Token>, SfError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = q.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = |t: Tok| Token { tok: t, pos };
        match c {
            ',' => {
                out.push(single(Tok::Comma));
                i += 1;
            }
            '(' => {
                out.push(single(Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push(single(Tok::RParen));
                i += 1;
            }
            '=' => {
                out.push(single(Tok::Op("=")));
                i += 1;
            }
            '!' | '<' | '>' => {
                let next = chars.get(i + 1).map(|(_, c)| *c);
                let (op, len) = match (c, next) {
                    ('!', Some('=')) => ("!=", 2),
                    ('<', Some('>')) => ("!=", 2),
                    ('<', Some('=')) => ("<=", 2),
                    ('>', Some('=')) => (">=", 2),
                    ('<', _) => ("<", 1),
                    ('>', _) => (">", 1),
                    _ => return Err(error_at(q, pos, "MALFORMED_QUERY", &format!("unexpected token: '{c}'"))),
                };
                out.push(single(Tok::Op(op)));
                i += len;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    let (p, c) = chars[i];
                    if c == '\'' {
                        closed = true;
                        i += 1;
                        break;
                    }
                    if c == '\\' {
                        let Some(&(_, e)) = chars.get(i + 1) else { break };
                        let mapped = match e {
                            'n' | 'N' => '\n',
                            'r' | 'R' => '\r',
                            't' | 'T' => '\t',
                            'b' | 'B' => '\u{8}',
                            'f' | 'F' => '\u{c}',
                            '"' => '"',
                            '\'' => '\'',
                            '\\' => '\\',
                            'u' => {
                                let hex: String = chars.iter().skip(i + 2).take(4).map(|(_, c)| *c).collect();
                                let cp = (hex.len() == 4).then(|| u32::from_str_radix(&hex, 16).ok()).flatten();
                                match cp.and_then(char::from_u32) {
                                    Some(ch) => {
                                        s.push(ch);
                                        i += 6;
                                        continue;
                                    }
                                    None => {
                                        return Err(error_at(q, p, "MALFORMED_QUERY", "Invalid unicode escape sequence"))
                                    }
                                }
                            }
                            _ => {
                                return Err(error_at(
                                    q,
                                    p,
                                    "MALFORMED_QUERY",
                                    &format!("Invalid string literal '\\{e}'. Illegal character sequence '\\{e}' in string literal."),
                                ))
                            }
                        };
                        s.push(mapped);
                        i += 2;
                        continue;
                    }
                    s.push(c);
                    i += 1;
                }
                if !closed {
                    return Err(error_at(
                        q,
                        pos,
                        "MALFORMED_QUERY",
                        "unexpected token: <EOF>: unterminated string literal",
                    ));
                }
                out.push(Token { tok: Tok::Str(s), pos });
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|(_, d)| d.is_ascii_digit())) => {
                let mut s = String::new();
                s.push(c);
                i += 1;
                while let Some(&(_, d)) = chars.get(i) {
                    if d.is_ascii_alphanumeric() || matches!(d, '.' | ':' | '-' | '+') {
                        s.push(d);
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push(Token { tok: Tok::Num(s), pos });
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.get(i) {
                    if d.is_alphanumeric() || d == '_' || d == '.' {
                        s.push(d);
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push(Token { tok: Tok::Ident(s), pos });
            }
            other => return Err(error_at(q, pos, "MALFORMED_QUERY", &format!("unexpected token: '{other}'"))),
        }
    }
    Ok(out)
}

/// A literal in a condition.
#[derive(Clone, Debug, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Null,
    Num(f64),
    /// Unquoted date or datetime literal.
    Date(String),
}

/// A resolved field reference: the object's field, or a parent's field through a relationship.
#[derive(Clone, Debug)]
struct FieldRef {
    field: FieldDef,
    /// `(relationship name, reference field name on the base object, parent object name)`.
    via: Option<(String, String, String)>,
}

#[derive(Clone, Debug)]
enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(FieldRef, &'static str, Lit),
    In(FieldRef, bool, Vec<Lit>),
}

struct Parser<'a> {
    q: &'a str,
    toks: Vec<Token>,
    i: usize,
    state: &'a State,
    object: Option<ObjectSchema>,
}

fn is_kw(t: Option<&Token>, kw: &str) -> bool {
    matches!(t, Some(Token { tok: Tok::Ident(s), .. }) if s.eq_ignore_ascii_case(kw))
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }

    fn pos(&self) -> usize {
        self.peek().map(|t| t.pos).unwrap_or(self.q.len())
    }

    fn unexpected(&self) -> SfError {
        let what = match self.peek().map(|t| &t.tok) {
            None => "<EOF>".to_string(),
            Some(Tok::Ident(s) | Tok::Num(s)) => s.clone(),
            Some(Tok::Str(s)) => format!("'{s}'"),
            Some(Tok::Op(o)) => (*o).to_string(),
            Some(Tok::Comma) => ",".into(),
            Some(Tok::LParen) => "(".into(),
            Some(Tok::RParen) => ")".into(),
        };
        error_at(self.q, self.pos(), "MALFORMED_QUERY", &format!("unexpected token: '{what}'"))
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), SfError> {
        if is_kw(self.peek(), kw) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if is_kw(self.peek(), kw) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().map(|t| &t.tok) == Some(tok) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<(String, usize), SfError> {
        match self.peek() {
            Some(Token { tok: Tok::Ident(s), pos }) => {
                let r = (s.clone(), *pos);
                self.i += 1;
                Ok(r)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn resolve(&self, name: &str, pos: usize) -> Result<FieldRef, SfError> {
        let Some(object) = &self.object else { return Err(self.unexpected()) };
        let no_such = || {
            error_at(
                self.q,
                pos,
                "INVALID_FIELD",
                &format!(
                    "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                    object.name
                ),
            )
        };
        let parts: Vec<&str> = name.split('.').collect();
        // A leading "Object." qualifier is allowed, as in Salesforce.
        let parts: Vec<&str> =
            if parts.len() > 1 && parts[0].eq_ignore_ascii_case(&object.name) { parts[1..].to_vec() } else { parts };
        match parts.as_slice() {
            [field] => object.field(field).cloned().map(|field| FieldRef { field, via: None }).ok_or_else(no_such),
            [rel, field] => {
                let reference = object.relationship(rel).ok_or_else(|| {
                    error_at(
                        self.q,
                        pos,
                        "INVALID_FIELD",
                        &format!(
                            "Didn't understand relationship '{rel}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
                        ),
                    )
                })?;
                let parent_name = reference.reference_to.first().cloned().unwrap_or_default();
                let parent = self.state.schema.object(&parent_name).ok_or_else(no_such)?;
                let f = parent.field(field).cloned().ok_or_else(|| {
                    error_at(
                        self.q,
                        pos,
                        "INVALID_FIELD",
                        &format!("No such column '{field}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.", parent.name),
                    )
                })?;
                Ok(FieldRef {
                    field: f,
                    via: Some((
                        reference.relationship_name.clone().unwrap_or_default(),
                        reference.name.clone(),
                        parent.name.clone(),
                    )),
                })
            }
            _ => Err(no_such()),
        }
    }

    fn literal(&mut self) -> Result<Lit, SfError> {
        let t = self.peek().cloned().ok_or_else(|| self.unexpected())?;
        let lit = match &t.tok {
            Tok::Str(s) => Lit::Str(s.clone()),
            Tok::Num(n) => {
                if n.contains('-') && !n.starts_with('-') || n.contains(':') {
                    Lit::Date(n.clone())
                } else {
                    Lit::Num(n.parse::<f64>().map_err(|_| self.unexpected())?)
                }
            }
            Tok::Ident(s) if s.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Tok::Ident(s) if s.eq_ignore_ascii_case("false") => Lit::Bool(false),
            Tok::Ident(s) if s.eq_ignore_ascii_case("null") => Lit::Null,
            _ => return Err(self.unexpected()),
        };
        self.i += 1;
        Ok(lit)
    }

    fn check_id_literal(&self, f: &FieldRef, lit: &Lit, pos: usize) -> Result<Lit, SfError> {
        if matches!(f.field.field_type, FieldType::Id | FieldType::Reference) {
            if let Lit::Str(s) = lit {
                return match ids::normalize(s) {
                    Some(id) => Ok(Lit::Str(id)),
                    None => {
                        Err(error_at(self.q, pos, "INVALID_QUERY_FILTER_OPERATOR", &format!("invalid ID field: {s}")))
                    }
                };
            }
        }
        Ok(lit.clone())
    }

    fn condition(&mut self) -> Result<Cond, SfError> {
        let mut left = self.conjunction()?;
        while self.eat_kw("OR") {
            let right = self.conjunction()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Cond, SfError> {
        let mut left = self.factor()?;
        while self.eat_kw("AND") {
            let right = self.factor()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Cond, SfError> {
        if self.eat_kw("NOT") {
            return Ok(Cond::Not(Box::new(self.factor()?)));
        }
        if self.eat(&Tok::LParen) {
            let c = self.condition()?;
            if !self.eat(&Tok::RParen) {
                return Err(self.unexpected());
            }
            return Ok(c);
        }
        let (name, pos) = self.ident()?;
        let f = self.resolve(&name, pos)?;
        let negated = self.eat_kw("NOT");
        if self.eat_kw("IN") {
            if !self.eat(&Tok::LParen) {
                return Err(self.unexpected());
            }
            let mut list = Vec::new();
            loop {
                let p = self.pos();
                let lit = self.literal()?;
                list.push(self.check_id_literal(&f, &lit, p)?);
                if self.eat(&Tok::Comma) {
                    continue;
                }
                if self.eat(&Tok::RParen) {
                    break;
                }
                return Err(self.unexpected());
            }
            return Ok(Cond::In(f, negated, list));
        }
        if negated {
            return Err(self.unexpected());
        }
        let op = match self.peek().map(|t| &t.tok) {
            Some(Tok::Op(op)) => *op,
            _ => return Err(self.unexpected()),
        };
        self.i += 1;
        let p = self.pos();
        let lit = self.literal()?;
        let lit = if lit == Lit::Null { lit } else { self.check_id_literal(&f, &lit, p)? };
        if lit == Lit::Null && op != "=" && op != "!=" {
            return Err(error_at(self.q, p, "MALFORMED_QUERY", "unexpected token: 'null'"));
        }
        Ok(Cond::Cmp(f, op, lit))
    }
}

/// A parsed query.
struct Query {
    object: ObjectSchema,
    /// `None` for `COUNT()`.
    fields: Option<Vec<FieldRef>>,
    cond: Option<Cond>,
    order: Vec<(FieldRef, bool, bool)>,
    limit: Option<usize>,
    offset: usize,
}

fn parse(state: &State, q: &str) -> Result<Query, SfError> {
    let toks = lex(q)?;
    let mut p = Parser { q, toks, i: 0, state, object: None };
    p.expect_kw("SELECT")?;
    // Field names are resolved once the object is known: collect them first.
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut count = false;
    if is_kw(p.peek(), "COUNT") && p.toks.get(p.i + 1).map(|t| &t.tok) == Some(&Tok::LParen) {
        p.i += 2;
        if !p.eat(&Tok::RParen) {
            return Err(p.unexpected());
        }
        count = true;
    } else {
        loop {
            let (name, pos) = p.ident()?;
            if name.eq_ignore_ascii_case("FROM") {
                p.i -= 1;
                return Err(p.unexpected());
            }
            names.push((name, pos));
            if !p.eat(&Tok::Comma) {
                break;
            }
        }
    }
    p.expect_kw("FROM")?;
    let (obj_name, obj_pos) = p.ident()?;
    let object = state.schema.object(&obj_name).cloned().ok_or_else(|| {
        error_at(
            q,
            obj_pos,
            "INVALID_TYPE",
            &format!("sObject type '{obj_name}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."),
        )
    })?;
    p.object = Some(object.clone());
    let mut fields = Vec::new();
    for (name, pos) in &names {
        let f = p.resolve(name, *pos)?;
        let dup = fields.iter().any(|g: &FieldRef| {
            g.field.name == f.field.name && g.via.as_ref().map(|v| &v.0) == f.via.as_ref().map(|v| &v.0)
        });
        if dup {
            return Err(error_at(q, *pos, "INVALID_FIELD", &format!("duplicate field selected: {name}")));
        }
        fields.push(f);
    }
    let cond = if p.eat_kw("WHERE") { Some(p.condition()?) } else { None };
    let mut order = Vec::new();
    if p.eat_kw("ORDER") {
        p.expect_kw("BY")?;
        loop {
            let (name, pos) = p.ident()?;
            let f = p.resolve(&name, pos)?;
            let desc = if p.eat_kw("DESC") {
                true
            } else {
                p.eat_kw("ASC");
                false
            };
            let mut nulls_first = !desc;
            if p.eat_kw("NULLS") {
                if p.eat_kw("FIRST") {
                    nulls_first = true;
                } else {
                    p.expect_kw("LAST")?;
                    nulls_first = false;
                }
            }
            order.push((f, desc, nulls_first));
            if !p.eat(&Tok::Comma) {
                break;
            }
        }
    }
    let number = |p: &mut Parser, kw: &str| -> Result<Option<usize>, SfError> {
        if !p.eat_kw(kw) {
            return Ok(None);
        }
        match p.peek().map(|t| t.tok.clone()) {
            Some(Tok::Num(n)) => {
                let v = n.parse::<usize>().map_err(|_| p.unexpected())?;
                p.i += 1;
                Ok(Some(v))
            }
            _ => Err(p.unexpected()),
        }
    };
    let limit = number(&mut p, "LIMIT")?;
    let offset = number(&mut p, "OFFSET")?.unwrap_or(0);
    if p.peek().is_some() {
        return Err(p.unexpected());
    }
    Ok(Query { object, fields: if count { None } else { Some(fields) }, cond, order, limit, offset })
}

/// The value of a field reference on a record (following a parent relationship if needed).
fn value_of(state: &State, rec: &Record, f: &FieldRef) -> Value {
    match &f.via {
        None => rec.get(&f.field.name).cloned().unwrap_or(Value::Null),
        Some((_, ref_field, parent)) => rec
            .get(ref_field)
            .and_then(Value::as_str)
            .and_then(|id| state.get(parent, id))
            .and_then(|p| p.get(&f.field.name).cloned())
            .unwrap_or(Value::Null),
    }
}

fn compare(field: &FieldDef, v: &Value, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Value::Null, _) | (_, Lit::Null) => None,
        (Value::Bool(a), Lit::Bool(b)) => Some(a.cmp(b)),
        (Value::Number(a), Lit::Num(b)) => a.to_string().parse::<f64>().ok().and_then(|a| a.partial_cmp(b)),
        (Value::String(a), Lit::Num(b)) => a.parse::<f64>().ok().and_then(|a| a.partial_cmp(b)),
        (Value::String(a), Lit::Str(b) | Lit::Date(b)) => {
            if field.field_type == FieldType::DateTime {
                if let (Some(x), Some(y)) = (parse_datetime(a), parse_datetime(b)) {
                    return Some(x.cmp(&y));
                }
            }
            if matches!(field.field_type, FieldType::Id | FieldType::Reference) {
                return Some(a.as_str().cmp(b.as_str()));
            }
            Some(a.to_lowercase().cmp(&b.to_lowercase()))
        }
        (Value::Bool(a), Lit::Str(b)) => Some(a.to_string().cmp(&b.to_lowercase())),
        _ => None,
    }
}

fn eval(state: &State, rec: &Record, c: &Cond) -> bool {
    match c {
        Cond::And(a, b) => eval(state, rec, a) && eval(state, rec, b),
        Cond::Or(a, b) => eval(state, rec, a) || eval(state, rec, b),
        Cond::Not(a) => !eval(state, rec, a),
        Cond::Cmp(f, op, lit) => {
            let v = value_of(state, rec, f);
            if *lit == Lit::Null {
                return (*op == "=") == v.is_null();
            }
            let ord = compare(&f.field, &v, lit);
            match *op {
                "=" => ord == Some(Ordering::Equal),
                // SOQL's != matches nulls too.
                "!=" => ord != Some(Ordering::Equal),
                "<" => ord == Some(Ordering::Less),
                "<=" => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                ">" => ord == Some(Ordering::Greater),
                ">=" => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                _ => false,
            }
        }
        Cond::In(f, negated, list) => {
            let v = value_of(state, rec, f);
            let hit = list.iter().any(|lit| {
                if *lit == Lit::Null {
                    v.is_null()
                } else {
                    compare(&f.field, &v, lit) == Some(Ordering::Equal)
                }
            });
            hit != *negated
        }
    }
}

fn order_values(a: &Value, b: &Value, nulls_first: bool) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => {
            if nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (_, Value::Null) => {
            if nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()).then_with(|| x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let x = x.to_string().parse::<f64>().unwrap_or(0.0);
            let y = y.to_string().parse::<f64>().unwrap_or(0.0);
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        _ => Ordering::Equal,
    }
}

/// Runs a query; returns the REST query result (`totalSize`, `done`, `records`).
pub(crate) fn run(state: &State, q: &str) -> Result<Value, SfError> {
    let query = parse(state, q)?;
    let empty = Default::default();
    let all = state.data.records.get(&query.object.name).unwrap_or(&empty);
    let mut rows: Vec<&Record> =
        all.values().filter(|r| query.cond.as_ref().is_none_or(|c| eval(state, r, c))).collect();
    if !query.order.is_empty() {
        rows.sort_by(|a, b| {
            for (f, desc, nulls_first) in &query.order {
                let (va, vb) = (value_of(state, a, f), value_of(state, b, f));
                // Null placement is absolute; DESC reverses only the non-null order.
                let ord = match (va.is_null(), vb.is_null()) {
                    (false, false) => {
                        let o = order_values(&va, &vb, *nulls_first);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                    _ => order_values(&va, &vb, *nulls_first),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
    }
    let rows: Vec<&Record> = rows.into_iter().skip(query.offset).take(query.limit.unwrap_or(usize::MAX)).collect();
    let Some(fields) = &query.fields else {
        return Ok(json!({ "totalSize": rows.len(), "done": true, "records": [] }));
    };
    let records: Vec<Value> = rows
        .iter()
        .map(|rec| {
            let id = rec.get("Id").and_then(Value::as_str).unwrap_or_default();
            let mut out = Map::new();
            out.insert(
                "attributes".into(),
                json!({ "type": query.object.name, "url": state.record_url(&query.object.name, id) }),
            );
            for f in fields {
                match &f.via {
                    None => {
                        out.insert(f.field.name.clone(), value_of(state, rec, f));
                    }
                    Some((rel, ref_field, parent)) => {
                        let parent_id = rec.get(ref_field).and_then(Value::as_str).map(str::to_string);
                        let parent_rec = parent_id.as_deref().and_then(|pid| state.get(parent, pid));
                        match parent_rec {
                            None => {
                                out.insert(rel.clone(), Value::Null);
                            }
                            Some(prec) => {
                                let entry = out.entry(rel.clone()).or_insert_with(|| {
                                    json!({ "attributes": { "type": parent, "url": state.record_url(parent, parent_id.as_deref().unwrap_or_default()) } })
                                });
                                if let Value::Object(m) = entry {
                                    m.insert(f.field.name.clone(), prec.get(&f.field.name).cloned().unwrap_or(Value::Null));
                                }
                            }
                        }
                    }
                }
            }
            Value::Object(out)
        })
        .collect();
    Ok(json!({ "totalSize": records.len(), "done": true, "records": records }))
}
