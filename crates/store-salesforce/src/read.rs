//! Reads: one record with its history (one call; the history is the service's own, from the local
//! store), and a customer's records (one call, plus an owner lookup when the cache lacks an owner).

use std::collections::HashMap;

use lifecycle::{IdNumber, Product, RecordType};
use serde_json::Value;
use store::{RecordWithHistory, SearchResult, StoreError};

use crate::client::{Label, Repeat};
use crate::composite::Composite;
use crate::records::{self, customer_filter, select, to_record};
use crate::soql::{full_id, literal, sobject};
use crate::SalesforceStore;

pub(crate) async fn get(
    s: &SalesforceStore,
    record_type: RecordType,
    id: &str,
) -> Result<Option<RecordWithHistory>, StoreError> {
    // The history is kept under the 18-character id the org answers with.
    let Some(id) = full_id(record_type, id) else {
        return Ok(None);
    };
    let id = id.as_str();
    let client = &s.client;
    let field = &s.config.owner_user_field;
    let mut c = Composite::new(false);
    c.query(
        client,
        "rec",
        &format!("SELECT {} FROM {} WHERE Id = {}", select(&s.config, record_type), sobject(record_type), literal(id)),
    );
    // The owner's RM code rides in the same call, by reference to the record's OwnerId.
    let owner = format!("SELECT Id, {field} FROM User WHERE Id = '");
    c.query_with_reference(client, "owner", &owner, "rec.records[0].OwnerId", "'");
    if record_type == RecordType::Opportunity {
        c.query(
            client,
            "src",
            &format!(
                "SELECT {} FROM Lead WHERE ConvertedOpportunityId = {} LIMIT 1",
                records::LEAD_CUSTOMER,
                literal(id)
            ),
        );
    }
    let parts = c.send(client, Label { operation: "get", step: "read" }, Repeat::Safe).await.map_err(|e| s.error(e))?;
    let Some(record) = parts[0].records().map_err(|e| s.error(e))?.into_iter().next() else {
        return Ok(None);
    };
    // A failed owner lookup (a queue owns the record) leaves the org's id in ownerId.
    let owner = parts[1].records().ok().and_then(|users| users.into_iter().next()).and_then(|u| {
        let code = u.get(field.as_str()).and_then(Value::as_str)?.to_owned();
        s.owners.remember_user(u.get("Id").and_then(Value::as_str)?, &code);
        Some(code)
    });
    let source = parts.get(2).and_then(|p| p.records().ok()).and_then(|r| r.into_iter().next());
    let from = source.as_ref().and_then(|l| records::id(l).map(str::to_owned));
    let mut record = to_record(&s.config, record_type, &record, owner, from);
    if let Some(lead) = &source {
        records::customer_from_lead(&mut record, lead);
    }
    let history = s.sidecar.history(id).await?;
    Ok(Some(RecordWithHistory { record, history }))
}

pub(crate) async fn search(
    s: &SalesforceStore,
    id_number: &IdNumber,
    product: Option<&Product>,
) -> Result<SearchResult, StoreError> {
    let client = &s.client;
    let filter = customer_filter(&s.config, id_number, product);
    let mut c = Composite::new(false);
    for t in [RecordType::Lead, RecordType::Opportunity] {
        c.query(
            client,
            sobject(t),
            &format!(
                "SELECT {} FROM {} WHERE {filter} ORDER BY CreatedDate DESC, Id DESC LIMIT 200",
                select(&s.config, t),
                sobject(t)
            ),
        );
    }
    let parts =
        c.send(client, Label { operation: "search", step: "read" }, Repeat::Safe).await.map_err(|e| s.error(e))?;
    let exact = |mut records: Vec<Value>| {
        records.retain(|r| records::is_of(&s.config, r, id_number, product));
        records
    };
    let leads = exact(parts[0].records().map_err(|e| s.error(e))?);
    let opportunities = exact(parts[1].records().map_err(|e| s.error(e))?);
    let users = leads.iter().chain(&opportunities).filter_map(records::owner_user);
    let codes = owner_codes(s, users, "search").await?;
    let code = |r: &Value| records::owner_user(r).and_then(|u| codes.get(u).cloned());
    let source: HashMap<&str, &Value> =
        leads.iter().filter_map(|l| Some((l.get("ConvertedOpportunityId").and_then(Value::as_str)?, l))).collect();
    Ok(SearchResult {
        leads: leads.iter().map(|r| to_record(&s.config, RecordType::Lead, r, code(r), None)).collect(),
        opportunities: opportunities
            .iter()
            .map(|r| {
                let lead = records::id(r).and_then(|id| source.get(id));
                let from = lead.and_then(|l| records::id(l)).map(str::to_owned);
                let mut record = to_record(&s.config, RecordType::Opportunity, r, code(r), from);
                if let Some(lead) = lead {
                    records::customer_from_lead(&mut record, lead);
                }
                record
            })
            .collect(),
    })
}

/// RM codes of the org users `users`: from the cache, and the rest in one lookup (for `operation`). A
/// queue, or a user without a code, is left out.
pub(crate) async fn owner_codes<'a>(
    s: &SalesforceStore,
    users: impl Iterator<Item = &'a str>,
    operation: &'static str,
) -> Result<HashMap<String, String>, StoreError> {
    let mut codes = HashMap::new();
    let mut missing = Vec::new();
    for user in users {
        match s.owners.code_for(user) {
            Some(code) => {
                codes.insert(user.to_owned(), code);
            }
            None if user.starts_with("005") && !missing.contains(&user) => missing.push(user),
            None => {}
        }
    }
    if missing.is_empty() {
        return Ok(codes);
    }
    let field = &s.config.owner_user_field;
    let ids = missing.iter().map(|u| literal(u)).collect::<Vec<_>>().join(", ");
    let mut c = Composite::new(false);
    c.query(&s.client, "owners", &format!("SELECT Id, {field} FROM User WHERE Id IN ({ids})"));
    let parts = c.send(&s.client, Label { operation, step: "lookup" }, Repeat::Safe).await.map_err(|e| s.error(e))?;
    for u in parts[0].records().map_err(|e| s.error(e))? {
        if let (Some(id), Some(code)) =
            (u.get("Id").and_then(Value::as_str), u.get(field.as_str()).and_then(Value::as_str))
        {
            s.owners.remember_user(id, code);
            codes.insert(id.to_owned(), code.to_owned());
        }
    }
    Ok(codes)
}
