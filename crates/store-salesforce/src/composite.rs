//! `/composite` requests: up to 25 subrequests (at most 5 queries) for the price of one API call, and the
//! reading of their answers. The top-level answer is HTTP 200 even when a subrequest failed, so every
//! subresponse is checked here; a rolled-back `allOrNone` request becomes one [`SfError::Api`] carrying
//! every subrequest's errors (the failing one first, `PROCESSING_HALTED` for the rest).

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Body, Client, Label, Repeat};
use crate::error::{OrgError, SfError};

pub(crate) struct Composite {
    all_or_none: bool,
    subrequests: Vec<Value>,
}

/// One subresponse.
#[derive(Debug)]
pub(crate) struct Part {
    pub status: u16,
    pub body: Value,
}

impl Part {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The errors of a failed subrequest.
    pub fn errors(&self) -> Vec<OrgError> {
        serde_json::from_value(self.body.clone()).unwrap_or_default()
    }

    /// The `records` of a successful query subrequest.
    pub fn records(&self) -> Result<Vec<Value>, SfError> {
        if !self.ok() {
            return Err(SfError::Api { status: self.status, errors: self.errors() });
        }
        match self.body.get("records") {
            Some(Value::Array(records)) => Ok(records.clone()),
            _ => Err(SfError::Unexpected { status: self.status, detail: "a query answer without records".into() }),
        }
    }
}

impl Composite {
    pub fn new(all_or_none: bool) -> Self {
        Self { all_or_none, subrequests: Vec::new() }
    }

    pub fn query(&mut self, client: &Client, reference: &str, soql: &str) -> &mut Self {
        let url = client.data_path(&format!("/query?q={}", crate::soql::encode_query(soql)));
        self.subrequests.push(json!({ "method": "GET", "url": url, "referenceId": reference }));
        self
    }

    /// A query whose SOQL is `before`, the composite reference `@{reference}` (a value an earlier
    /// subrequest answered), then `after`. Only the service's own references go here: request values go
    /// through [`Composite::query`], where an `@{` is text.
    pub fn query_with_reference(
        &mut self,
        client: &Client,
        reference_id: &str,
        before: &str,
        reference: &str,
        after: &str,
    ) -> &mut Self {
        let q = crate::soql::encode_query_with_reference(before, reference, after);
        let url = client.data_path(&format!("/query?q={q}"));
        self.subrequests.push(json!({ "method": "GET", "url": url, "referenceId": reference_id }));
        self
    }

    pub fn create(&mut self, client: &Client, reference: &str, sobject: &str, body: Value) -> &mut Self {
        let url = client.data_path(&format!("/sobjects/{sobject}"));
        self.subrequests.push(json!({ "method": "POST", "url": url, "referenceId": reference, "body": body }));
        self
    }

    pub fn update(&mut self, client: &Client, reference: &str, sobject: &str, id: &str, body: Value) -> &mut Self {
        let url = client.data_path(&format!("/sobjects/{sobject}/{id}"));
        self.subrequests.push(json!({ "method": "PATCH", "url": url, "referenceId": reference, "body": body }));
        self
    }

    /// Sends it as one API call and returns the subresponses in order. With `allOrNone`, any failed
    /// subrequest fails the whole call (the org rolled everything back).
    pub async fn send(&self, client: &Client, label: Label, repeat: Repeat) -> Result<Vec<Part>, SfError> {
        let body = json!({ "allOrNone": self.all_or_none, "compositeRequest": self.subrequests });
        let path = client.data_path("/composite");
        let mut attempt = 1;
        loop {
            let answer = client.call(label, Method::POST, &path, Body::Json(&body), repeat).await?;
            let parts = parse(&answer, self.subrequests.len())?;
            if !(self.all_or_none && parts.iter().any(|p| !p.ok())) {
                return Ok(parts);
            }
            let mut errors: Vec<OrgError> = parts.iter().filter(|p| !p.ok()).flat_map(Part::errors).collect();
            errors.sort_by_key(|e| e.code == "PROCESSING_HALTED");
            let status = parts.iter().find(|p| !p.ok()).map_or(400, |p| p.status);
            // Another transaction held a row too long: the org rolled the whole request back, so the same
            // request may be sent again. The answer is HTTP 200, so the client's own retry never sees it.
            let failed: Vec<&OrgError> = errors.iter().filter(|e| e.code != "PROCESSING_HALTED").collect();
            let row_lock = !failed.is_empty() && failed.iter().all(|e| e.code == "UNABLE_TO_LOCK_ROW");
            if row_lock && attempt < client.config.max_attempts {
                let ceiling = std::time::Duration::from_millis(100u64 << attempt.min(5));
                tokio::time::sleep(ceiling.mul_f64(fastrand::f64())).await;
                attempt += 1;
                continue;
            }
            return Err(SfError::Api { status, errors });
        }
    }
}

fn parse(answer: &Value, expected: usize) -> Result<Vec<Part>, SfError> {
    let unexpected = |detail: &str| SfError::Unexpected { status: 200, detail: detail.into() };
    let Some(Value::Array(items)) = answer.get("compositeResponse") else {
        return Err(unexpected("a composite answer without compositeResponse"));
    };
    if items.len() != expected {
        return Err(unexpected("a composite answer with the wrong number of subresponses"));
    }
    items
        .iter()
        .map(|item| {
            let status = item
                .get("httpStatusCode")
                .and_then(Value::as_u64)
                .ok_or_else(|| unexpected("a subresponse without httpStatusCode"))?;
            Ok(Part { status: status as u16, body: item.get("body").cloned().unwrap_or(Value::Null) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subresponses_are_read_in_order_and_checked() {
        let answer = json!({"compositeResponse": [
            {"body": {"totalSize": 0, "done": true, "records": []}, "httpHeaders": {}, "httpStatusCode": 200, "referenceId": "a"},
            {"body": [{"errorCode": "PROCESSING_HALTED", "message": "rolled back"}], "httpHeaders": {}, "httpStatusCode": 400, "referenceId": "b"}
        ]});
        let parts = parse(&answer, 2).unwrap();
        assert!(parts[0].ok() && parts[0].records().unwrap().is_empty());
        assert!(!parts[1].ok());
        assert_eq!(parts[1].errors()[0].code, "PROCESSING_HALTED");
        assert!(parse(&answer, 3).is_err());
        assert!(parse(&json!({"x": 1}), 0).is_err());
    }
}
